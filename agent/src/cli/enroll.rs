//! `hais-agent enroll`: obtain the agent's identity with a one-time join token.
//!
//! Exit codes (sysexits.h): 0 enrolled; 64 bad server address; 65 malformed token; 69 control
//! plane unreachable or not the one the token pins; 73 state directory not writable, or
//! already enrolled (without `--force`); 75 an agent is running on this state directory, or
//! the control plane is temporarily unavailable; 76 unexpected answer; 77 token refused
//! (unknown, used or expired) or agent revoked; 78 bad configuration.

use clap::Args;
use hais_shared::wire::ErrorCode;
use hais_svid::JoinToken;

use super::StateArgs;
use crate::state::StateDir;
use crate::uplink::client::{ClientError, Transport};
use crate::uplink::events::hostname;

#[derive(Debug, Args)]
#[command(after_help = "\
The token comes from the control plane (`hais-control-plane token create`); it is single-use \
and carries the hash of the control plane's CA, so this agent only talks to that control plane. \
The key is generated here and never leaves the host; svid.pem, svid.key and bundle.pem are \
written to the state directory (mode 0600, directory 0700), with the server's address so that \
`hais-agent run` needs no --server.\n\
Exit codes: 0 enrolled, 64 bad server address, 65 malformed token, 69 control plane unreachable \
or not the one the token pins, 73 state directory not writable or already enrolled, \
75 agent running / control plane busy, 76 unexpected answer, 77 token refused, 78 bad configuration.")]
pub struct EnrollArgs {
    /// The control plane's QUIC endpoint (the ja4 service, UDP port 3001 by default).
    #[arg(long, value_name = "HOST:PORT", env = "HAIS_SERVER")]
    pub server: String,
    /// The join token (`hais1.…`). Prefer HAIS_JOIN_TOKEN to keep it off the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HAIS_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    #[command(flatten)]
    pub state: StateArgs,
    /// Replace an existing identity.
    #[arg(long)]
    pub force: bool,
}

type Failure = (i32, String);

pub fn run(args: EnrollArgs) -> i32 {
    match enroll(&args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("hais-agent enroll: {msg}");
            code
        }
    }
}

fn enroll(args: &EnrollArgs) -> Result<(), Failure> {
    let token = JoinToken::parse(&args.token).map_err(|e| (65, e.to_string()))?;
    let cfg = args.state.config()?;
    let state = StateDir::new(&cfg.state_dir);
    let shown = state.path().display().to_string();
    state.ensure().map_err(|e| (73, e.to_string()))?;
    // A running agent would keep using (and renewing) the old identity.
    let _lock = state.lock().map_err(|e| (e.exit_code(), e.to_string()))?;
    if state.is_enrolled() && !args.force {
        let who = state.load_identity().ok().flatten().map_or_else(
            || "an unreadable identity".to_string(),
            |(s, _)| s.spiffe_id.to_string(),
        );
        return Err((
            73,
            format!("{shown} already holds {who}; pass --force to replace it"),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (71, format!("tokio runtime: {e}")))?;
    let host = hostname();
    let (svid, bundle) = rt
        .block_on(crate::uplink::enroll::enroll(
            &args.server,
            &token,
            &host,
            &Transport::default(),
        ))
        .map_err(|e| explain(&args.server, e))?;
    svid.save(&bundle, state.path())
        .map_err(|e| (73, format!("saving the identity: {e}")))?;
    state
        .save_server(&args.server)
        .map_err(|e| (73, e.to_string()))?;
    println!("{}", svid.spiffe_id);
    eprintln!(
        "hais-agent enroll: enrolled as {} (SVID valid until {}, renewed automatically by `hais-agent run`); identity in {shown}",
        svid.spiffe_id, svid.not_after
    );
    Ok(())
}

/// An exit code and a message that says what to do.
fn explain(server: &str, e: ClientError) -> Failure {
    match &e {
        ClientError::BadAddress(_) => (64, e.to_string()),
        ClientError::Refused { code, message } => match code {
            ErrorCode::Unauthorized => (
                77,
                format!(
                    "join token refused ({message}): tokens are single-use and expire; create a new one"
                ),
            ),
            ErrorCode::Revoked => (77, format!("refused: {message}")),
            ErrorCode::Unavailable => (75, format!("control plane busy, try again: {message}")),
            _ => (76, e.to_string()),
        },
        ClientError::Protocol(_) | ClientError::Svid(_) => (76, e.to_string()),
        ClientError::Tls(_) => (70, e.to_string()),
        _ => (
            69,
            format!(
                "{e}\n  check that {server} is the control plane's UDP port (3001 by default), that it runs, \
                 and that the token was created by it (the token pins its CA)"
            ),
        ),
    }
}
