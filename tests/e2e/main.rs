//! End-to-end tests: the real `sandflow` binary and library against the
//! real components in `components/dist/`.

mod api;
mod backends;
mod call;
mod chaos;
mod deploy;
mod distributed;
mod fake;
mod fuzz;
mod http;
mod inspect;
mod language;
mod new;
mod polyglot;
mod quota;
mod readme;
mod sandbox;
mod scheduler;
mod schedules;
mod stepflow;
mod store;
mod support;
mod trace;
mod ui;
mod waits;
mod web;
mod workflows;
