//! Small command-line clients of a running service: `publish` and `subscribe`, on the client
//! crate (`mcp-fanout-client`).

pub mod publish;
pub mod subscribe;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("`--params` is not a JSON object: {0}")]
    Params(String),
    #[error(transparent)]
    Publish(#[from] mcp_fanout_client::PublishError),
    #[error(transparent)]
    Follow(#[from] mcp_fanout_client::FollowError),
    #[error("no event within {0} s")]
    Timeout(u64),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}
