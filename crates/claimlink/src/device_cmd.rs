//! `claimlink device --bundle DIR`: a simulated device running the agent.
//!
//! Without an AT option it behaves like a module whose host only wants it online: it connects
//! to its endpoint (staging from the factory), waits to be claimed, moves, and once in its
//! owner's account publishes `{"hello": ...}` on `{ThingName}/hello`, printing each step. With
//! `--at-stdio` the host is this terminal (AT commands on stdin, responses on stdout); with
//! `--at-pty` it is whatever opens the printed pseudo-terminal (a serial-port stand-in).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use claimlink_agent::{Agent, AgentOptions};
use claimlink_mqtt::QoS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// `device` arguments.
#[derive(clap::Args)]
pub(crate) struct DeviceArgs {
    /// Device bundle directory (from `claimlink ca issue-devices`).
    #[arg(long)]
    bundle: PathBuf,
    /// Take AT commands on stdin and answer on stdout.
    #[arg(long, conflicts_with = "at_pty")]
    at_stdio: bool,
    /// Take AT commands on a new pseudo-terminal (its path is printed).
    #[arg(long)]
    at_pty: bool,
}

/// `claimlink device`.
pub(crate) fn run(args: &DeviceArgs) -> Result<()> {
    let agent = Agent::open(&args.bundle, AgentOptions::default())
        .with_context(|| format!("cannot open the device bundle {}", args.bundle.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        if args.at_stdio {
            at_loop(agent, tokio::io::stdin(), tokio::io::stdout()).await
        } else if args.at_pty {
            let (master, path) = open_pty()?;
            println!("AT interface on {path}");
            let read = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
            let write = tokio::fs::File::from_std(std::fs::File::from(master));
            at_loop(agent, read, write).await
        } else {
            autonomous(agent).await
        }
    })
}

async fn at_loop<R, W>(mut agent: Agent, input: R, mut output: W) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut lines = tokio::io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than the AT limit is answered with ERR1 and skipped.
        let n =
            (&mut lines).take(claimlink_agent::at::MAX_LINE as u64 + 2).read_until(b'\n', &mut line).await?;
        if n == 0 {
            agent.disconnect().await;
            return Ok(());
        }
        let response = if !line.ends_with(b"\n") && n as u64 > claimlink_agent::at::MAX_LINE as u64 {
            // Skip the rest of the line.
            let mut rest = Vec::new();
            lines.read_until(b'\n', &mut rest).await?;
            claimlink_agent::at::AtError::Overflow.response()
        } else {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                continue;
            }
            agent.execute_line(text).await
        };
        output.write_all(response.as_bytes()).await?;
        output.flush().await?;
    }
}

use tokio::io::AsyncReadExt as _;

async fn autonomous(mut agent: Agent) -> Result<()> {
    let thing = agent.thing_name().to_owned();
    println!("device {thing}");
    let mut status = agent.status();
    agent.connect_in_background();
    let mut said_hello = 0;
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() { return Ok(()); }
            }
            _ = tokio::signal::ctrl_c() => {
                agent.disconnect().await;
                return Ok(());
            }
        }
        let s = status.borrow_and_update().clone();
        let state = if s.onboarded { "CUSTOMER" } else { "STAGING" };
        if s.connected {
            println!("connected to {} ({state}) over {}", s.endpoint, s.cipher_suite.unwrap_or("TLS"));
            if s.onboarded && said_hello < s.connections {
                said_hello = s.connections;
                let body = serde_json::json!({"hello": thing, "connections": s.connections}).to_string();
                match agent.publish(&format!("{thing}/hello"), body.into(), QoS::AtLeastOnce).await {
                    Ok(()) => println!("published {thing}/hello (accepted)"),
                    Err(e) => println!("publish {thing}/hello refused: {e}"),
                }
            } else if !s.onboarded {
                println!("waiting to be claimed");
            }
        } else {
            println!("disconnected from {} ({state})", s.endpoint);
        }
    }
}

/// A pseudo-terminal in raw mode: the master and the slave's path.
fn open_pty() -> Result<(OwnedFd, String)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).context("cannot open a pseudo-terminal")?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let path = name.to_string_lossy().into_owned();
    let mut t = rustix::termios::tcgetattr(master.as_fd())?;
    t.make_raw();
    rustix::termios::tcsetattr(master.as_fd(), rustix::termios::OptionalActions::Now, &t)?;
    Ok((master, path))
}
