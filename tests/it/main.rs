//! Integration tests, one binary. Every module but `drift` needs the real control
//! plane: `make test` starts it (tests/cluster) and sets KUBECONFIG; without it
//! these tests fail, they never pass silently.

mod common;
mod server;

mod api;
mod browser;
mod chaos;
mod chart;
mod console;
mod control_plane;
mod controller;
mod crds;
mod drift;
mod fuzz;
mod leader;
mod lists;
mod power;
mod real_node;
mod reliability;
mod serve;
