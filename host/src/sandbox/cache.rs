//! Compiled components on disk, so a second process does not compile again.
//!
//! An artifact is named by the component's SHA-256 and a hash of the
//! engine's compatibility settings (wasmtime version, target, the config
//! flags that shape compiled code) and its compiler:
//! `<sha256>-<engine>.cwasm`. Writes go to
//! a temporary file renamed into place, so concurrent processes never see a
//! half-written artifact.
//!
//! wasmtime checks an artifact's header and compatibility, not its code, so
//! each file ends with a magic, the code's length and its CRC-32: a
//! truncated or corrupted artifact (a bad disk, a bit flip, a partial copy)
//! fails the check and is compiled again, never mapped as code. (A checksum
//! against accidents, not an attacker: whoever can write the state dir can
//! write the binary too.) The check reads the file in pieces; wasmtime then
//! maps it (`Component::deserialize_file`) rather than copying it into
//! memory it allocates (0.6-0.8 ms of a `sandflow call` of `echo`). The
//! footer is mapped with the code and never read by wasmtime: its ELF
//! reader goes by the offsets in the headers.
//!
//! Loading an artifact maps native code into the process: the cache
//! directory must be as trusted as the sandflow binary (it lives under the
//! state dir, which only the user writes).

use super::engine::Compiler;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// The cache in `dir` of code that `compiler` made for `engine`.
    pub(crate) fn new(dir: PathBuf, engine: &Engine, compiler: Compiler) -> Self {
        // `DefaultHasher::new()` has fixed keys, so the name is stable for a
        // given sandflow build; wasmtime checks compatibility again on load.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // Named apart even if wasmtime's hash did not tell the compilers
        // apart: a process loads only the code of the compiler it asked for.
        compiler.hash(&mut h);
        // Another file layout is another name: files of other builds are
        // not found (so not reported as corrupt), not misread.
        MAGIC.hash(&mut h);
        ArtifactCache { dir, engine_key: format!("{:016x}", h.finish()) }
    }

    /// Where the artifact of the component `sha256` is (or would be).
    pub(crate) fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compiled component, if there is a usable one.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path_for(sha256);
        match checked(&path) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("ignoring corrupt cached artifact {} (its checksum does not match); compiling again", path.display());
                return None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("ignoring unreadable cached artifact {}: {e}", path.display());
                return None;
            }
        }
        // SAFETY: the file is what `store` below wrote from
        // `Component::serialize` (length and CRC-32 match), for an engine with
        // the same compatibility hash, under a state dir only the user can
        // write (see module docs); files are renamed into place whole, so
        // the one mapped is one `store` wrote. wasmtime also validates the
        // header and rejects incompatible artifacts.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("ignoring unusable cached artifact {}: {e:#}", path.display());
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
        std::fs::create_dir_all(&self.dir)?;
        write_artifact(&self.path_for(sha256), code)?;
        Ok(())
    }
}

/// Writes compiled code (what `serialize` or `precompile_component` made)
/// as an artifact at `path`: the code and its footer, to a temporary file
/// renamed into place.
pub(crate) fn write_artifact(path: &Path, mut file: Vec<u8>) -> std::io::Result<()> {
    let (len, crc) = (file.len() as u64, crc32fast::hash(&file));
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&crc.to_le_bytes());
    let tmp = tmp_path(path);
    std::fs::write(&tmp, &file)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The last bytes of every artifact this build writes, after the code: the
/// magic, the code's length (u64) and its CRC-32 (u32), little-endian.
const MAGIC: &[u8; 8] = b"sfcwasm3";
const FOOTER: usize = MAGIC.len() + 8 + 4;

/// Whether the artifact at `path` ends with a footer whose length and
/// CRC-32 match the code before it. Reads in pieces, copying nothing.
fn checked(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let Some(len) = file.metadata()?.len().checked_sub(FOOTER as u64) else { return Ok(false) };
    let mut footer = [0; FOOTER];
    file.read_exact_at(&mut footer, len)?;
    let (magic, rest) = footer.split_first_chunk::<8>().expect("the footer holds a magic");
    let (written_len, rest) = rest.split_first_chunk::<8>().expect("and a length");
    let crc = rest.first_chunk::<4>().expect("and a checksum");
    if magic != MAGIC || u64::from_le_bytes(*written_len) != len {
        return Ok(false);
    }
    let (mut code, mut hasher, mut piece) = (file.take(len), crc32fast::Hasher::new(), vec![0; 64 << 10]);
    loop {
        match code.read(&mut piece)? {
            0 => break,
            n => hasher.update(&piece[..n]),
        }
    }
    Ok(code.limit() == 0 && hasher.finalize() == u32::from_le_bytes(*crc))
}

fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    path.with_file_name(name)
}
