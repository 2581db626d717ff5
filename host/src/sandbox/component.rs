//! A loaded step component: compiled once per process (or read from the
//! artifact cache), its imports checked against what sandflow links, and
//! pre-linked into an `InstancePre` so each attempt only instantiates.

use super::bindings::StepPre;
use super::host::StepState;
use std::path::{Path, PathBuf};
use wasmtime::component::{ComponentExportIndex, InstancePre};

/// The WIT world a step component must implement.
pub const STEP_WORLD: &str = "sandflow:step/step@0.1.0";

/// Import prefixes sandflow links. Everything else is refused at load.
const LINKED: &[&str] = &[
    "sandflow:step/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    // Only with `grants.http`: checked before every attempt.
    "wasi:http/",
    "wasi:io/",
    "wasi:random/",
    // Linked so runtimes that import it (CPython) load; every socket,
    // connection and lookup is denied (WasiCtx: no TCP, UDP or names).
    "wasi:sockets/",
];

/// A component ready to run.
pub struct StepComponent {
    /// Where it came from, for messages: a file path or a name.
    pub(crate) origin: String,
    pub(crate) sha256: String,
    pub(crate) size: usize,
    pub(crate) compiler: super::Compiler,
    pub(crate) pre: StepPre<StepState>,
    pub(crate) describe: Option<ComponentExportIndex>,
    pub(crate) imports: Vec<String>,
    pub(crate) exports: Vec<String>,
}

impl StepComponent {
    /// Where the component came from (its path, usually).
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// Lowercase hex SHA-256 of the component's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// Which compiler made the code it runs in this process (Cranelift,
    /// unless the sandbox compiles new components quickly first).
    pub fn compiler(&self) -> super::Compiler {
        self.compiler
    }
    /// Whether it exports `describe`.
    pub fn has_describe(&self) -> bool {
        self.describe.is_some()
    }
    /// Names of its imports (interfaces, with versions).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
    /// Names of its exports.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
    /// Its first wasi:http import, if it imports wasi:http: it then needs
    /// `grants.http` to run.
    pub fn http_import(&self) -> Option<&str> {
        http_import(&self.imports)
    }
    pub(crate) fn instance_pre(&self) -> &InstancePre<StepState> {
        self.pre.instance_pre()
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct LoadError {
    /// The file (or name) that failed to load.
    pub origin: String,
    /// What is wrong with it.
    pub kind: LoadErrorKind,
}

/// What is wrong with a component that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    #[error("cannot read the file: {0}")]
    /// The file could not be read.
    Io(#[source] std::io::Error),
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic bytes)")]
    /// Not WebAssembly at all.
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component; build for the `wasm32-wasip2` target, \
         or wrap the module with `wasm-tools component new`"
    )]
    /// A core module, not a component.
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    /// WebAssembly that does not validate.
    Invalid(String),
    /// It does not export `run`; also lists the imports sandflow does not link.
    #[error(
        "not a sandflow step: it does not export `run` (expected the world {STEP_WORLD}, see wit/step.wit){}",
        also_imports(.0)
    )]
    NotAStep(Vec<String>),
    #[error("not a sandflow step: {0} (expected the world {STEP_WORLD}, see wit/step.wit)")]
    /// It exports `run` with another signature, or imports something sandflow does not link.
    WrongWorld(String),
    /// Compiling it went past a limit ([`crate::sandbox::CompileLimits`]).
    #[error("{0}")]
    CompileLimit(String),
    /// Imports that are neither linked nor granted. A step failure of kind
    /// `instantiate` when it happens at run time.
    #[error("{}", ungranted_message(.0))]
    UngrantedImports(Vec<String>),
}

impl LoadErrorKind {
    /// Whether this is the component asking for more than it may have (an
    /// `instantiate` failure of the step), rather than a file that is not a
    /// usable step at all.
    pub fn is_ungranted(&self) -> bool {
        matches!(self, LoadErrorKind::UngrantedImports(_))
    }

    /// Whether the file is a valid component that is not a sandflow step:
    /// another world, missing `run`, or imports sandflow does not link.
    pub fn is_not_a_step(&self) -> bool {
        matches!(self, LoadErrorKind::UngrantedImports(_) | LoadErrorKind::NotAStep(_) | LoadErrorKind::WrongWorld(_))
    }

    /// The short reason a component is not a step, for a one-line note.
    pub fn reason(&self) -> String {
        match self {
            LoadErrorKind::UngrantedImports(imports) => {
                let names: Vec<String> = imports.iter().map(|n| format!("`{n}`")).collect();
                format!("it imports {}", names.join(", "))
            }
            LoadErrorKind::NotAStep(imports) => format!("it does not export `run`{}", also_imports(imports)),
            other => other.to_string(),
        }
    }
}

fn also_imports(imports: &[String]) -> String {
    if imports.is_empty() {
        return String::new();
    }
    let names: Vec<String> = imports.iter().map(|n| format!("`{n}`")).collect();
    format!("; it also imports {}, which sandflow does not provide", names.join(", "))
}

fn ungranted_message(imports: &[String]) -> String {
    let is_network = |n: &&String| n.starts_with("wasi:sockets/") || n.starts_with("wasi:http/");
    let network: Vec<&String> = imports.iter().filter(is_network).collect();
    let other: Vec<String> = imports.iter().filter(|n| !is_network(n)).map(|n| format!("`{n}`")).collect();
    let mut parts = Vec::new();
    if let Some(first) = network.first() {
        let more = if network.len() > 1 { format!(" and {} more network interfaces", network.len() - 1) } else { String::new() };
        parts.push(format!("`{first}`{more}, but network access is never granted"));
    }
    if !other.is_empty() {
        parts.push(format!("{}, which sandflow does not provide", other.join(", ")));
    }
    format!("imports {}; remove the code that needs them", parts.join("; and "))
}

/// Reads a component file's bytes, with errors that name the file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError { origin: path.display().to_string(), kind: LoadErrorKind::Io(e) })
}

/// Cheap checks before compiling: is this a WebAssembly component at all?
pub fn check_header(bytes: &[u8]) -> Result<(), LoadErrorKind> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadErrorKind::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadErrorKind::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadErrorKind::Invalid("unknown WebAssembly version or layer".into()));
    }
    Ok(())
}

/// Checks a component without compiling it (see
/// [`crate::exec::ComponentCheck`]): the header, a validating parse of the
/// whole binary, then its top-level imports and exports as
/// [`crate::sandbox::Sandbox::load_bytes`] checks them after compiling.
pub fn check_component(origin: &str, bytes: &[u8]) -> Result<crate::exec::Loaded, LoadError> {
    Ok(crate::exec::Loaded { imports: checked_imports(origin, bytes)?, sha256: super::sha256_hex(bytes) })
}

/// [`check_component`] but for the SHA-256, which the caller has: the
/// component's imports if it passes.
pub(crate) fn checked_imports(origin: &str, bytes: &[u8]) -> Result<Vec<String>, LoadError> {
    let fail = |kind| LoadError { origin: origin.to_string(), kind };
    check_header(bytes).map_err(fail)?;
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator.validate_all(bytes).map_err(|e| fail(LoadErrorKind::Invalid(e.to_string())))?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    // Nested modules and components come as sections of their own, each
    // closed by an `End`: only depth 0 is the component's own.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let invalid = |e: wasmparser::BinaryReaderError| fail(LoadErrorKind::Invalid(e.to_string()));
        match payload.map_err(invalid)? {
            wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(invalid)?;
                    // Types a world names (`metadata`, `step-error`) are
                    // imported too, but need nothing of the host.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name.to_string());
                    }
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(invalid)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let ungranted = ungranted_imports(&imports);
    if !exports.iter().any(|e| e == "run") {
        return Err(fail(LoadErrorKind::NotAStep(ungranted)));
    }
    if !ungranted.is_empty() {
        return Err(fail(LoadErrorKind::UngrantedImports(ungranted)));
    }
    Ok(imports)
}

/// The first wasi:http import in `imports`.
pub fn http_import(imports: &[String]) -> Option<&str> {
    imports.iter().find(|n| n.starts_with("wasi:http/")).map(String::as_str)
}

/// Every import the component needs that sandflow does not link.
pub(crate) fn ungranted_imports(imports: &[String]) -> Vec<String> {
    imports.iter().filter(|name| !LINKED.iter().any(|p| name.starts_with(p))).cloned().collect()
}

/// The path of a component as given, for messages.
pub(crate) fn origin_of(path: &Path) -> String {
    PathBuf::from(path).display().to_string()
}

/// What a component's binary says about itself, without running it
/// (`sandflow component inspect`).
pub struct DecodedWorld {
    /// Its WIT world, printed.
    pub wit: String,
    /// Its imports' names: interfaces (`ns:pkg/iface@v`) and freestanding
    /// functions.
    pub imports: Vec<String>,
    /// Its exports, named as its imports are.
    pub exports: Vec<String>,
}

/// The component's WIT world, decoded from its binary: any valid
/// component has one, whether or not it is a sandflow step.
pub fn decode_world(bytes: &[u8]) -> Result<DecodedWorld, String> {
    let decoded = wit_component::decode(bytes).map_err(|e| format!("{e:#}"))?;
    let wit_parser::decoding::DecodedWasm::Component(resolve, world) = decoded else {
        return Err("a WIT package, not a component".into());
    };
    let package = resolve.worlds[world].package.ok_or("the world has no package")?;
    let mut printer = wit_component::WitPrinter::default();
    printer.emit_docs(false);
    printer.print(&resolve, package, &[]).map_err(|e| format!("{e:#}"))?;
    let names = |items: &wit_parser::IndexMap<wit_parser::WorldKey, wit_parser::WorldItem>| -> Vec<String> {
        items
            .iter()
            .filter(|(_, item)| !matches!(item, wit_parser::WorldItem::Type { .. }))
            .map(|(key, _)| resolve.name_world_key(key))
            .collect()
    };
    let w = &resolve.worlds[world];
    Ok(DecodedWorld { wit: printer.output.to_string(), imports: names(&w.imports), exports: names(&w.exports) })
}
