//! The routes of each feature. Handlers authenticate, read their input, call the core
//! or a store, and answer JSON (or upgrade, handing the socket to [`crate::ws`]).

pub(crate) mod admin;
pub(crate) mod console;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod mailbox;
pub(crate) mod rooms;
pub(crate) mod turn;
