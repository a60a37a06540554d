//! Checksummed frames: the unit of every file the disk backend writes.
//!
//! A file is an 8-byte magic followed by frames:
//!
//! ```text
//! len: u32 LE | !len: u32 LE | crc32(payload): u32 LE | payload: len bytes
//! ```
//!
//! The length is stored twice (once inverted) so a flipped bit in a header
//! is recognised as corruption instead of being read as a huge length that
//! runs past the end of the file, which would look like a torn write.
//!
//! Reading tells a **torn tail** (a crash cut the last write short: the file
//! ends inside a frame, or with a zero-filled tail, or its last frame fails
//! its checksum) from **corruption** (a bad frame with data after it, or a
//! header that fails its self-check). A torn tail can only be something
//! never acknowledged, so it is truncated; corruption stops the start with
//! the file and offset, and nothing is silently dropped.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted; anything bigger is corruption.
pub const MAX_PAYLOAD: u32 = 256 * 1024 * 1024;

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why a file could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is damaged before its end; nothing may be dropped silently.
    #[error("{path}: corrupt data at byte offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// What a frame reader found at the end of the frames it returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The file ends exactly after the last good frame.
    Clean,
    /// The last write was cut short; the good frames end at `offset`.
    Torn {
        /// Length of the file's valid prefix.
        offset: u64,
        /// Why the rest was judged torn.
        reason: String,
    },
}

/// Reads the frames of one file, sequentially.
pub struct FrameReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    file_len: u64,
    ending: Option<Ending>,
}

impl FrameReader {
    /// Opens `path` and checks its magic.
    #[allow(
        clippy::trivially_copy_pass_by_ref,
        reason = "the fuzz targets call this through `fuzzing` with a `&[u8; 8]` constant: signature kept"
    )]
    pub fn open(path: &Path, magic: &[u8; 8]) -> Result<Self, ReadError> {
        let io_err = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut found = [0u8; 8];
        let (offset, ending) = match input.read_exact(&mut found) {
            Ok(()) if &found == magic => (8, None),
            // A crash right after creating the file can leave it shorter
            // than its magic: nothing was ever written to it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (
                0,
                Some(Ending::Torn {
                    offset: 0,
                    reason: "the file is shorter than its header".into(),
                }),
            ),
            Err(e) => return Err(io_err(e)),
            Ok(()) => {
                return Err(ReadError::Corrupt {
                    path: path.to_owned(),
                    offset: 0,
                    reason: "not a file of this format (bad magic)".into(),
                });
            }
        };
        Ok(FrameReader {
            path: path.to_owned(),
            input,
            offset,
            file_len,
            ending,
        })
    }

    /// The next frame's offset and payload; `None` at the end, after which
    /// [`FrameReader::ending`] says how the file ended.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        if self.ending.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        let remaining = self.file_len - start;
        if remaining == 0 {
            self.ending = Some(Ending::Clean);
            return Ok(None);
        }
        if remaining < HEADER_LEN as u64 {
            return Ok(self.torn(start, "the file ends inside a frame header"));
        }
        let mut header = [0u8; HEADER_LEN];
        self.read(&mut header)?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (len, not_len, crc) = (word(0), word(4), word(8));
        if len == 0 && not_len == 0 && crc == 0 && self.rest_is_zero()? {
            return Ok(self.torn(start, "the file ends with zeros"));
        }
        if len != !not_len || len > MAX_PAYLOAD {
            return self.corrupt(start, "the frame header fails its self-check");
        }
        let end = start + HEADER_LEN as u64 + u64::from(len);
        if end > self.file_len {
            return Ok(self.torn(start, "the file ends inside a frame"));
        }
        let mut payload = vec![0u8; len as usize];
        self.read(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            if end == self.file_len {
                return Ok(self.torn(start, "the last frame fails its checksum"));
            }
            return self.corrupt(start, "the frame fails its checksum");
        }
        self.offset = end;
        Ok(Some((start, payload)))
    }

    /// How the file ended, once [`FrameReader::next_frame`] returned `None`.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        self.input.read_exact(buf).map_err(|source| ReadError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn rest_is_zero(&mut self) -> Result<bool, ReadError> {
        let mut buf = [0u8; 8192];
        let mut left = self.file_len - self.offset - HEADER_LEN as u64;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            self.read(&mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }

    /// Records a torn tail at `offset`: no more frames.
    fn torn(&mut self, offset: u64, reason: &str) -> Option<(u64, Vec<u8>)> {
        self.ending = Some(Ending::Torn {
            offset,
            reason: reason.into(),
        });
        None
    }

    fn corrupt(&mut self, offset: u64, reason: &str) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        Err(ReadError::Corrupt {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        })
    }
}

/// Cuts `path` to its first `len` bytes and makes that durable.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = File::options().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Writes `magic` and `frames` to `path` through a temporary file, fsyncs
/// it, renames it into place and fsyncs the directory: after a crash the
/// file is either absent or complete.
pub fn write_atomically(
    path: &Path,
    magic: [u8; 8],
    frames: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&magic)?;
    frames(&mut out)?;
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    let len = file.seek(SeekFrom::End(0))?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(len)
}

/// Makes a directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"TESTFRM1";

    fn write(path: &Path, payloads: &[&[u8]]) -> Vec<u64> {
        let mut out = MAGIC.to_vec();
        let mut ends = Vec::new();
        for p in payloads {
            encode_frame(&mut out, p);
            ends.push(out.len() as u64);
        }
        std::fs::write(path, out).unwrap();
        ends
    }

    fn read_all(path: &Path) -> Result<(Vec<Vec<u8>>, Ending), ReadError> {
        let mut r = FrameReader::open(path, MAGIC)?;
        let mut frames = Vec::new();
        while let Some((_, p)) = r.next_frame()? {
            frames.push(p);
        }
        let ending = r.ending.take().unwrap();
        Ok((frames, ending))
    }

    #[test]
    fn every_truncation_of_the_last_frame_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let payloads: [&[u8]; 3] = [b"first", b"second frame", &[7u8; 100]];
        let ends = write(&path, &payloads);
        let full = std::fs::read(&path).unwrap();
        for cut in ends[1]..ends[2] {
            std::fs::write(&path, &full[..usize::try_from(cut).unwrap()]).unwrap();
            let (frames, ending) = read_all(&path).unwrap();
            assert_eq!(frames.len(), 2, "cut at {cut}");
            if cut == ends[1] {
                assert_eq!(ending, Ending::Clean);
            } else {
                assert!(
                    matches!(ending, Ending::Torn { offset, .. } if offset == ends[1]),
                    "cut at {cut}: {ending:?}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_before_the_last_frame_is_corruption_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let payloads: [&[u8]; 3] = [b"first", b"second frame", b"third"];
        let ends = write(&path, &payloads);
        let full = std::fs::read(&path).unwrap();
        // Every byte of the first two frames, header and payload.
        for at in 8..usize::try_from(ends[1]).unwrap() {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let err = read_all(&path).unwrap_err().to_string();
            let frame_start = if (at as u64) < ends[0] { 8 } else { ends[0] };
            assert!(
                err.contains(&format!("byte offset {frame_start}")),
                "flip at {at}: {err}"
            );
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn_and_a_bad_magic_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let ends = write(&path, &[b"one"]);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &data).unwrap();
        let (frames, ending) = read_all(&path).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            ending,
            Ending::Torn {
                offset: ends[0],
                reason: "the file ends with zeros".into()
            }
        );

        std::fs::write(&path, b"NOTMAGIC").unwrap();
        assert!(
            read_all(&path)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        std::fs::write(&path, b"TEST").unwrap();
        let (frames, ending) = read_all(&path).unwrap();
        assert!(frames.is_empty() && matches!(ending, Ending::Torn { offset: 0, .. }));
    }
}
