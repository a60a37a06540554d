//! The frame reader over whole files: any file content is read as good
//! frames followed by a clean end, a torn tail or a corruption error (never
//! a panic, an I/O error or a huge allocation), and the good frames are
//! exactly the file's prefix up to where reading stopped. The first byte
//! chooses whether the magic is prepended, so both the magic check and the
//! frames get exercised.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use impression_counter::fuzzing::{Ending, FrameReader, ReadError, encode_frame};
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8; 8] = b"FUZZFRM1";

static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "impression-counter-fuzz-frames-{}",
        std::process::id()
    ))
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut file = Vec::with_capacity(rest.len() + 8);
    if selector & 1 == 1 {
        file.extend_from_slice(MAGIC);
    }
    file.extend_from_slice(rest);
    std::fs::write(&*PATH, &file).expect("write the input file");

    let mut reader = match FrameReader::open(&PATH, MAGIC) {
        Ok(reader) => reader,
        Err(ReadError::Corrupt { offset, .. }) => {
            assert_eq!(offset, 0);
            assert!(file.len() >= 8 && &file[..8] != MAGIC);
            return;
        }
        Err(e @ ReadError::Io { .. }) => panic!("{e}"),
    };
    let mut rebuilt = MAGIC.to_vec();
    loop {
        match reader.next_frame() {
            Ok(Some((offset, payload))) => {
                assert_eq!(offset, rebuilt.len() as u64);
                encode_frame(&mut rebuilt, &payload);
            }
            Ok(None) => break,
            Err(ReadError::Corrupt { offset, .. }) => {
                assert_eq!(offset, rebuilt.len() as u64);
                assert!((offset as usize) < file.len());
                return;
            }
            Err(e @ ReadError::Io { .. }) => panic!("{e}"),
        }
    }
    match reader.ending() {
        Some(Ending::Clean) => assert_eq!(rebuilt, file),
        Some(Ending::Torn { offset, .. }) => {
            if file.len() < 8 {
                assert_eq!(*offset, 0);
            } else {
                assert_eq!(*offset, rebuilt.len() as u64);
                assert_eq!(&file[..rebuilt.len()], &rebuilt[..]);
            }
        }
        None => panic!("no ending after the last frame"),
    }
});
