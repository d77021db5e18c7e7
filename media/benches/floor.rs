//! The floor under any SFU on this machine: what forwarding one SRTP packet costs when nothing
//! is done but the work no forwarding path can skip (receive, SRTP check and decrypt, encrypt
//! and tag, send; see `common/floor.rs` for what is counted and what is not). It is given per
//! forwarded packet, and as the one-to-one visits per core it would allow at the `sfu` bench's
//! rates if it were the whole cost, in that bench's lightest case (`--pause-unneeded`). The
//! `sfu` bench measures it too, as the baseline of its own run.
//!
//! Run: `cargo bench -p media --bench floor` (release build). `--gso` sends each batch in one
//! call, cut into datagrams by the kernel (UDP GSO): the best case, every packet of a batch
//! going to the same receiver with the same size, where the server sends one call per packet.
//! `--packets N` (default 400,000).

#![allow(clippy::print_stdout, reason = "a benchmark binary reports on stdout")]

#[path = "common/floor.rs"]
mod floor;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let packets: u64 = args
        .iter()
        .position(|a| a == "--packets")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(400_000);
    let gso = args.iter().any(|a| a == "--gso");
    let floor = floor::measure(packets, gso)?;
    println!(
        "forwarded {} SRTP packets ({} bytes) over loopback, {}: {:.2} µs of CPU each \
         (receive, check, decrypt, encrypt, tag, send)",
        floor.forwarded,
        floor::DATAGRAM,
        if gso {
            "each batch sent in one call (GSO)"
        } else {
            "one send call per packet"
        },
        floor.per_packet.as_secs_f64() * 1e6
    );
    println!(
        "  of which SRTP {:.2} µs; {:.1} packets per receive call",
        floor.srtp.as_secs_f64() * 1e6,
        floor.per_receive
    );
    println!(
        "if that were all an SFU did: {:.0} one-to-one visits per core (400 packets/s each)",
        floor.visits_per_core()
    );
    Ok(())
}
