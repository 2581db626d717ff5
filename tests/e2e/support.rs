//! Paths and helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// An example component from `components/dist/`.
pub fn example(name: &str) -> PathBuf {
    root().join("components/dist").join(format!("{name}.wasm"))
}

/// A hostile test component from `components/dist/hostile/`.
pub fn hostile(name: &str) -> PathBuf {
    root().join("components/dist/hostile").join(format!("{name}.wasm"))
}

/// A `sandflow` command with its own state dir.
pub fn sandflow(state: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandflow"));
    cmd.arg("--state-dir").arg(state.path()).current_dir(root());
    cmd
}

/// The id of the newest run in the store `cmd` (a `sandflow` command with
/// its state dir and store) reads.
pub fn newest_run(mut cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let (code, list, err) = run(cmd.borrow_mut().args(["--json", "runs", "list", "--limit", "1"]));
    assert_eq!(code, 0, "runs list: {err}");
    let runs: serde_json::Value = serde_json::from_str(&list).expect("runs list prints JSON");
    runs[0]["id"].as_str().expect("a run in the store").to_string()
}

/// Reads `stderr` up to the first line `wanted` accepts, and returns it.
pub fn read_until(stderr: &mut impl std::io::BufRead, wanted: impl Fn(&str) -> bool) -> String {
    let mut line = String::new();
    while !wanted(&line) {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "stderr ended before the line waited for");
    }
    line
}

/// Runs `cmd`; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("sandflow runs");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}

/// A run store to test against: the embedded SQLite store under the test's
/// state dir, or a fresh schema of its own on the PostgreSQL server named
/// by `SANDFLOW_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`).
pub enum Backend {
    Sqlite,
    Postgres(PgSchema),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The `--store` URL for a state dir.
    pub fn url(&self, state: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite:{}", state.join("sandflow.db").display()),
            Backend::Postgres(schema) => schema.url.clone(),
        }
    }

    /// A `sandflow` command with its own state dir, recording in this store.
    pub fn sandflow(&self, state: &tempfile::TempDir) -> Command {
        let mut cmd = sandflow(state);
        cmd.arg("--store").arg(self.url(state.path()));
        cmd
    }

    /// Runs one SQL query that returns a single integer.
    pub fn count(&self, state: &Path, query: &str, run_id: &str) -> i64 {
        match self {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(state.join("sandflow.db")).unwrap();
                conn.query_row(&query.replace("$1", "?1"), [run_id], |r| r.get(0)).unwrap()
            }
            Backend::Postgres(schema) => blocking(async {
                let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                client.query_one(query, &[&run_id]).await.unwrap().get::<_, i64>(0)
            }),
        }
    }
}

/// Whether the developer chose to skip the tests (or test halves) that
/// need `what` (`postgres`, `browser`, `toolchains`), by naming it in
/// `SANDFLOW_SKIP`. Otherwise a test whose prerequisite is missing fails,
/// saying what is missing and how to skip it: nothing is skipped silently.
pub fn skipping(what: &str, missing: &str) -> bool {
    let chosen = std::env::var("SANDFLOW_SKIP").is_ok_and(|v| v.split(',').any(|s| s.trim() == what || s.trim() == "all"));
    if !chosen {
        panic!("{missing}; install or start it (README, Quick start: the tests need it), or set SANDFLOW_SKIP={what} to skip what needs it");
    }
    eprintln!("notice: skipped (SANDFLOW_SKIP={what}): {missing}");
    true
}

/// Every backend the tests can reach: SQLite, and PostgreSQL (a missing
/// server fails the test unless `SANDFLOW_SKIP=postgres`: see [`skipping`]).
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if let Some(schema) = PgSchema::create() {
        all.push(Backend::Postgres(schema));
    }
    all
}

/// A schema of its own on the test server, dropped at the end of the test.
pub struct PgSchema {
    /// A URL whose connections use the schema (`options=-csearch_path=…`).
    pub url: String,
    base: String,
    pub name: String,
}

pub(crate) fn blocking<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)).join().unwrap()
    })
}

impl PgSchema {
    pub fn create() -> Option<PgSchema> {
        let base = std::env::var("SANDFLOW_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let created = blocking(async {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client.batch_execute(&format!("CREATE SCHEMA {name}")).await
        });
        match created {
            Ok(()) => {
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(PgSchema { url: format!("{base}{sep}options=-csearch_path%3D{name}"), base, name })
            }
            Err(e) => {
                skipping("postgres", &format!("PostgreSQL at {base} (SANDFLOW_TEST_POSTGRES) cannot be used: {e}"));
                None
            }
        }
    }
}

impl PgSchema {
    /// Runs one query with `$1` bound to `arg`; the first column of each row, as text.
    pub fn strings(&self, query: &str, arg: &str) -> Vec<String> {
        blocking(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.query(query, &[&arg]).await.unwrap().iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect()
        })
    }
}

impl PgSchema {
    /// Runs `sql` (statements without parameters) in the schema.
    pub fn execute(&self, sql: &str) {
        blocking(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        let _ = blocking(async move {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await
        });
    }
}

/// A component that passes every check made without compiling (valid,
/// exports `run`, imports nothing) and is slow and big to compile:
/// `functions` functions of `ops` arithmetic steps each over 64 locals.
/// What a hostile submitter sends to stall a worker.
pub fn compile_bomb(functions: u32, ops: u32) -> Vec<u8> {
    use wasm_encoder::*;
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    let mut funcs = FunctionSection::new();
    for _ in 0..functions {
        funcs.function(0);
    }
    module.section(&funcs);
    // Every value ends in a global: nothing is dead code to the compiler.
    let mut globals = GlobalSection::new();
    globals.global(GlobalType { val_type: ValType::I64, mutable: true, shared: false }, &ConstExpr::i64_const(0));
    module.section(&globals);
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    for f in 0..functions {
        let mut body = Function::new([(64, ValType::I64)]);
        // Values the compiler cannot know: nothing folds to a constant.
        for l in 0..64 {
            body.instruction(&Instruction::GlobalGet(0));
            body.instruction(&Instruction::I64Const(l as i64 + 1));
            body.instruction(&Instruction::I64Add);
            body.instruction(&Instruction::LocalSet(l));
        }
        for i in 0..ops {
            let (a, b, c) = (i % 64, (i * 7 + f) % 64, (i * 13 + 5) % 64);
            body.instruction(&Instruction::LocalGet(a));
            body.instruction(&Instruction::LocalGet(b));
            body.instruction(&Instruction::I64Mul);
            body.instruction(&Instruction::LocalGet(c));
            body.instruction(&Instruction::I64Add);
            body.instruction(&Instruction::LocalSet((i * 31 + 3) % 64));
        }
        body.instruction(&Instruction::I64Const(0));
        for l in 0..64 {
            body.instruction(&Instruction::LocalGet(l));
            body.instruction(&Instruction::I64Add);
        }
        body.instruction(&Instruction::GlobalSet(0));
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    module.section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    component.section(&instances);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::CoreInstanceExport { instance: 0, kind: ExportKind::Func, name: "run" });
    component.section(&aliases);
    let mut types = ComponentTypeSection::new();
    types.function().params(Vec::<(&str, ComponentValType)>::new()).result(None);
    component.section(&types);
    let mut canon = CanonicalFunctionSection::new();
    canon.lift(0, 0, Vec::<CanonicalOption>::new());
    component.section(&canon);
    let mut exports = ComponentExportSection::new();
    exports.export("run", ComponentExportKind::Func, 0, None);
    component.section(&exports);
    component.finish()
}
