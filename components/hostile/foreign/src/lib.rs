//! Not a step: a valid component of another world (`acme:greeter`), which
//! imports an interface sandflow does not provide and exports `greet`, not
//! `run`. Expected: `component inspect` shows its world and says why it is
//! not a step (exit 0); `call` and `run` refuse it (exit 2 / `instantiate`).
wit_bindgen::generate!({
    inline: "
        package acme:greeter@1.0.0;

        interface clock {
            now: func() -> u64;
        }

        world greeter {
            import clock;
            export greet: func(name: string) -> string;
        }
    ",
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name} at {}", acme::greeter::clock::now())
    }
}

export!(Greeter);
