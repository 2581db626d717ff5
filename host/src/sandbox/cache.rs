//! Compiled components on disk, so a second process does not compile again.
//!
//! An artifact is named by the component's SHA-256 and a hash of the
//! engine's compatibility settings (wasmtime version, target, the config
//! flags that shape compiled code): `<sha256>-<engine>.cwasm`. Writes go to
//! a temporary file renamed into place, so concurrent processes never see a
//! half-written artifact.
//!
//! wasmtime checks an artifact's header and compatibility, not its code, so
//! each file starts with a magic, the code's length and its CRC-32: a
//! truncated or corrupted artifact (a bad disk, a bit flip, a partial copy)
//! fails the check and is compiled again, never mapped as code. (A checksum
//! against accidents, not an attacker: whoever can write the state dir can
//! write the binary too.)
//!
//! Loading an artifact maps native code into the process: the cache
//! directory must be as trusted as the sandflow binary (it lives under the
//! state dir, which only the user writes).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        // `DefaultHasher::new()` has fixed keys, so the name is stable for a
        // given sandflow build; wasmtime checks compatibility again on load.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache { dir, engine_key: format!("{:016x}", h.finish()) }
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compiled component, if there is a usable one.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path_for(sha256);
        let file = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("ignoring unreadable cached artifact {}: {e}", path.display());
                return None;
            }
        };
        let Some(code) = checked(&file) else {
            tracing::warn!("ignoring corrupt cached artifact {} (its checksum does not match); compiling again", path.display());
            return None;
        };
        // SAFETY: the bytes are what `store` below wrote from
        // `Component::serialize` (length and CRC-32 match), for an engine with
        // the same compatibility hash, under a state dir only the user can
        // write (see module docs). wasmtime also validates the header and
        // rejects incompatible artifacts.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, code) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("ignoring unusable cached artifact {}: {e}", path.display());
                None
            }
        }
    }

    /// Saves a compiled component. Failing to cache is not an error: the
    /// next process compiles again.
    pub(crate) fn store(&self, sha256: &str, component: &Component) {
        if let Err(e) = self.try_store(sha256, component) {
            tracing::warn!("could not cache compiled component in {}: {e}", self.dir.display());
        }
    }

    fn try_store(&self, sha256: &str, component: &Component) -> Result<(), Box<dyn std::error::Error>> {
        let code = component.serialize().map_err(|e| e.to_string())?;
        let mut file = Vec::with_capacity(HEADER + code.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&(code.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&code).to_le_bytes());
        file.extend_from_slice(&code);
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_for(sha256);
        let tmp = tmp_path(&path);
        std::fs::write(&tmp, &file)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// The first bytes of every artifact this build writes.
const MAGIC: &[u8; 8] = b"sfcwasm2";
/// The magic, the code's length (u64) and its CRC-32 (u32), little-endian.
const HEADER: usize = MAGIC.len() + 8 + 4;

/// The code of an artifact file whose length and checksum match.
fn checked(file: &[u8]) -> Option<&[u8]> {
    let rest = file.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (crc, code) = rest.split_first_chunk::<4>()?;
    let whole = u64::from_le_bytes(*len) == code.len() as u64;
    (whole && u32::from_le_bytes(*crc) == crc32fast::hash(code)).then_some(code)
}

fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    path.with_file_name(name)
}
