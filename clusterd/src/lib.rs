pub mod auth;
pub mod config;
pub mod model;
pub mod raft;
