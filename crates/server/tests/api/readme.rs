//! The README's examples, run as written against the real binary, so they
//! cannot drift from what the service does.
//!
//! The `sh` block under "## Using it" is run by `bash` with `set -euo
//! pipefail` and a `curl` that fails on any 4xx/5xx answer, with
//! `localhost:8080` pointed at a server on a free port. Then every JSON
//! answer the README shows in a comment (`# {...}`) must appear in what the
//! commands printed; `...` in a shown answer stands for any text.

use std::process::Command;

use crate::process::ServerProcess;

/// The README's "Using it" shell block.
fn using_it_block() -> String {
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split("\n## Using it\n")
        .nth(1)
        .expect("the README has a \"## Using it\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section has a sh block");
    block.to_owned()
}

/// The answers the block's comments show: each `# {...}` comment, cut at
/// its `...` placeholders into the pieces that must appear verbatim.
fn shown_answers(block: &str) -> Vec<Vec<String>> {
    block
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix('#'))
        .filter_map(|comment| {
            let json = &comment[comment.find('{')?..];
            // `{"t":"...","count":...}` shows an answer's shape; `<img ...>`
            // in a comment is no answer.
            json.starts_with("{\"").then(|| {
                json.split("...")
                    .map(str::to_owned)
                    .filter(|piece| !piece.is_empty())
                    .collect()
            })
        })
        .collect()
}

#[test]
fn the_readme_examples_work_as_written() {
    let server = ServerProcess::start(&[("STORAGE", "memory")]);
    let dir = tempfile::tempdir().unwrap();
    let block = using_it_block();
    let script = format!(
        "set -euo pipefail\n\
         curl() {{ command curl --fail-with-body --silent --show-error --max-time 10 \"$@\"; }}\n\
         {}\n",
        block.replace("localhost:8080", &server.addr)
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "a README example failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );

    let answers = shown_answers(&block);
    assert!(
        answers.len() >= 8,
        "the README shows its answers: {answers:?}"
    );
    for pieces in answers {
        for piece in &pieces {
            assert!(
                stdout.contains(piece.as_str()),
                "the README shows {piece:?} (of {pieces:?}), the service answered:\n{stdout}"
            );
        }
    }
    let _ = server.terminate();
}

#[test]
fn shown_answers_are_cut_at_their_placeholders() {
    let block = "curl x\n# {\"id\":\"...\",\"n\":1}\n#   <img src=\"...\">\n# 202 Accepted\n";
    assert_eq!(
        shown_answers(block),
        vec![vec!["{\"id\":\"".to_owned(), "\",\"n\":1}".to_owned()]]
    );
}
