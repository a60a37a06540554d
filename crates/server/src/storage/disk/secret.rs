//! The pixel id secret of a durable store, in `DATA_DIR/pixel-id.secret`.
//!
//! ```text
//! 64 lowercase hex digits (the 32 secret bytes), then "\n"; mode 0600
//! ```
//!
//! Written once, on first use, through `pixel-id.secret.tmp`: fsynced,
//! renamed into place, directory fsynced, and only then used, so after a
//! crash the file is either complete or absent, and if absent no id was
//! ever derived from the lost secret. A leftover `.tmp` is removed on start
//! with the other unfinished files.
//! Nothing else reads or rewrites it: the directory's lock keeps a second
//! process out, and the store's mutex a second writer.
//!
//! A damaged file is an error, never silently replaced: a new secret would
//! change every hashed id of the day, so that the same browsers were
//! counted twice.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::frame::sync_dir;
use super::{DiskError, io_error};
use crate::storage::HashSecret;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "pixel-id.secret";

/// The secret's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The secret kept in `dir`, made and written there if there is none.
pub fn load_or_create(dir: &Path) -> Result<HashSecret, DiskError> {
    let path = path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => HashSecret::from_hex(&text).ok_or_else(|| DiskError::Corrupt {
            path,
            offset: 0,
            reason: "not a pixel id secret (64 hex digits expected); restore it from a backup \
                     or delete it to make a new one (hashed ids change for the day)"
                .into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = HashSecret::generate().map_err(|e| DiskError::Io {
                context: "making the pixel id secret".into(),
                source: io::Error::other(e.to_string()),
            })?;
            write(&path, &secret).map_err(io_error(format!("writing {}", path.display())))?;
            Ok(secret)
        }
        Err(e) => Err(io_error(format!("reading {}", path.display()))(e)),
    }
}

fn write(path: &Path, secret: &HashSecret) -> io::Result<()> {
    let tmp = path.with_extension("secret.tmp");
    let mut options = File::options();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(format!("{}\n", secret.to_hex()).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), made);
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text, format!("{}\n", made.to_hex()));
        assert!(!dir.path().join("pixel-id.secret.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "not hex\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("pixel-id.secret") && err.contains("64 hex digits"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(path(dir.path())).unwrap(),
            "not hex\n"
        );
    }
}
