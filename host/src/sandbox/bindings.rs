//! The one `bindgen!` call: host-side bindings for the `step` world in the
//! top-level `wit/`. `describe` (world `described-step`) is optional, so it
//! is looked up by name at load time rather than generated here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "step",
    // Guests run on fibers so a deadline or a cancellation can stop them.
    exports: { default: async },
    // Host imports may trap: a step over a quota is stopped in the call.
    // `state` and `blobs` reach the run store, which may be a server: they
    // are async so a slow store never blocks a runtime thread.
    imports: {
        "sandflow:step/state.get": async | trappable,
        "sandflow:step/state.set": async | trappable,
        "sandflow:step/blobs.put": async | trappable,
        "sandflow:step/blobs.get": async | trappable,
        default: trappable,
    },
});

pub use self::sandflow::step::types::Metadata;
