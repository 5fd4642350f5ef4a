//! Small command-line clients of a running service: `publish` and `subscribe`.

pub mod publish;
pub mod subscribe;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("`--params` is not a JSON object: {0}")]
    Params(String),
    #[error("the service answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the stream ended before {wanted} events arrived (got {got})")]
    Ended { wanted: u64, got: u64 },
    #[error("no event within {0} s")]
    Timeout(u64),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}
