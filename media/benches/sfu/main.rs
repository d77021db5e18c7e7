//! SFU benchmark: N rooms of two publishers (audio + three-layer simulcast video at realistic
//! rates) through the media server on loopback, for several N; prints forwarded packets/s, the
//! server's CPU per forwarded stream, the delay through the server (p50/p99), and memory per
//! participant. Its baseline, measured first in the same run, is the machine's floor (the
//! `floor` bench): what forwarding a packet costs with nothing but SRTP and one send per packet.
//! Each row gives the server's CPU per forwarded packet as a multiple of it.
//!
//! Three processes, so nothing but the server is counted as the server's: this binary
//! orchestrates; it starts itself as `--server` (a `MediaServer` on a single-threaded tokio
//! runtime: its CPU time is the server's, on one core) and as `--loadgen` (the str0m clients).
//!
//! Run: `cargo bench -p media --bench sfu` (release build). Options after `--`:
//! `--rooms 10,50,200` `--warmup 6` `--measure 10` `--pause-unneeded` (clients pause the layers
//! the server says nobody needs, as a browser app would; by default all three layers flow, the
//! heavier case for the server).

#![allow(clippy::print_stdout, reason = "a benchmark binary reports on stdout")]

#[path = "../common/floor.rs"]
mod floor;
mod loadgen;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use media::server::{MediaConfig, MediaServer};
use media::token::{MediaTokenKey, Role};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--server") => server(&args[2..]),
        Some("--loadgen") => loadgen_main(&args[2..]),
        _ => orchestrate(&args[1..]),
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16).map_err(Into::into))
        .collect()
}

// ------------------------------------------------------------------------------- server

/// CPU seconds (user + system) of this process, and its resident memory in KiB, from /proc.
fn self_usage() -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'; in
    // USER_HZ, which Linux fixes at 100 for this interface.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(((utime + stime) as f64 / 100.0, rss))
}

fn server(args: &[String]) -> anyhow::Result<()> {
    let key = MediaTokenKey::new(&unhex(arg(args, "--key").context("--key")?)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut config = MediaConfig::new("127.0.0.1:0".parse()?, key);
        config.no_media_timeout = Duration::from_secs(30);
        let media = MediaServer::start(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = listener.local_addr()?;
        let app = media.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        println!("ADDR ws://{http}/media/signal {}", media.udp_addr());
        std::io::stdout().flush()?;
        // Commands on stdin: `sample` prints CPU, memory and the forwarding delays since the
        // previous sample; end of input stops the server.
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        let mut previous = media.forward_delay().await;
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "sample" {
                let (cpu, rss) = self_usage()?;
                let delays = media.forward_delay().await;
                let window = delays.since(&previous);
                previous = delays;
                let us = |q: f64| window.quantile(q).as_micros();
                println!(
                    "SAMPLE {cpu} {rss} {} {} {} {}",
                    window.count(),
                    us(0.5),
                    us(0.99),
                    us(1.0)
                );
                std::io::stdout().flush()?;
            }
        }
        drop(media);
        anyhow::Ok(())
    })
}

// ------------------------------------------------------------------------------ loadgen

fn loadgen_main(args: &[String]) -> anyhow::Result<()> {
    let url = arg(args, "--url").context("--url")?.to_owned();
    let rooms: usize = arg(args, "--rooms").context("--rooms")?.parse()?;
    let key = MediaTokenKey::new(&unhex(arg(args, "--key").context("--key")?)?)?;
    let warmup = Duration::from_secs(arg(args, "--warmup").unwrap_or("6").parse()?);
    let measure = Duration::from_secs(arg(args, "--measure").unwrap_or("10").parse()?);
    let honor_layers = args.iter().any(|a| a == "--pause-unneeded");
    // Two worker threads: at hundreds of clients one thread cannot produce realistic rates and
    // complete the DTLS handshakes in time. The server's CPU time is counted in its own process,
    // so sharing the cores slows it down but does not inflate its count.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let totals = Arc::new(loadgen::Totals::default());
        for r in 0..rooms {
            for side in ["a", "b"] {
                let encounter = format!("bench-{r}");
                let participant = format!("p{r}{side}");
                let spec = loadgen::ClientSpec {
                    url: url.clone(),
                    token: loadgen::token(&key, &encounter, &participant, Role::Patient),
                    encounter,
                    participant,
                    honor_layers,
                };
                let totals = totals.clone();
                tokio::spawn(async move {
                    if let Err(e) = loadgen::run_client(spec, totals.clone()).await {
                        eprintln!("client failed: {e:#}");
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Joins spread over time, as visits do not all start in the same millisecond (and
            // a burst of DTLS handshakes would time out on a 2-core machine).
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let clients = rooms as u64 * 2;
        let deadline = Instant::now() + Duration::from_secs(40);
        while totals.receiving.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let bandwidth estimates ramp up and layers settle before measuring.
        tokio::time::sleep(warmup).await;

        let snapshot = |t: &loadgen::Totals| {
            (
                t.sent.load(Ordering::Relaxed),
                t.received_audio.load(Ordering::Relaxed),
                t.received_video.load(Ordering::Relaxed),
                t.received_bytes.load(Ordering::Relaxed),
            )
        };
        println!("MEASURE_START");
        std::io::stdout().flush()?;
        let before = snapshot(&totals);
        let started = Instant::now();
        totals.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(measure).await;
        totals.measuring.store(false, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let after = snapshot(&totals);
        println!("MEASURE_END");
        std::io::stdout().flush()?;
        // Let the clients flush their delay histograms.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (p50, p99, max, n) = match totals.delays.lock().ok().and_then(|h| h.clone()) {
            Some(h) => (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                h.len(),
            ),
            None => (0, 0, 0, 0),
        };
        println!(
            "RESULT {} {} {} {} {} {} {} {} {} {} {}",
            clients,
            totals.connected.load(Ordering::Relaxed),
            totals.receiving.load(Ordering::Relaxed),
            (after.0 - before.0) as f64 / secs,
            (after.1 - before.1) as f64 / secs,
            (after.2 - before.2) as f64 / secs,
            (after.3 - before.3) as f64 * 8.0 / secs,
            p50,
            p99,
            max,
            n,
        );
        println!("ERRORS {}", totals.errors.load(Ordering::Relaxed));
        std::io::stdout().flush()?;
        anyhow::Ok(())
    })
}

// -------------------------------------------------------------------------- orchestrator

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// The next line starting with `prefix`, its remaining words.
    fn expect(&mut self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("process ended before {prefix}");
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.split_whitespace().map(str::to_owned).collect());
            }
        }
    }

    /// The server's CPU seconds, resident KiB, and the forwarding delays since the previous
    /// sample: count, p50, p99 and max in microseconds.
    fn sample(&mut self) -> anyhow::Result<(f64, u64, [u64; 4])> {
        let stdin = self.stdin.as_mut().context("stdin")?;
        writeln!(stdin, "sample")?;
        stdin.flush()?;
        let words = self.expect("SAMPLE")?;
        let mut delays = [0; 4];
        for (i, d) in delays.iter_mut().enumerate() {
            *d = words.get(2 + i).context("delays")?.parse()?;
        }
        Ok((
            words.first().context("cpu")?.parse()?,
            words.get(1).context("rss")?.parse()?,
            delays,
        ))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Row {
    rooms: usize,
    connected: String,
    forwarded_pps: f64,
    sent_pps: f64,
    /// Sent over what all clients should send: below 1 the load generator did not keep up.
    sent_share: f64,
    forwarded_mbps: f64,
    cpu_core: f64,
    cpu_per_stream_us: f64,
    /// The server's CPU per forwarded packet over the floor's.
    times_floor: f64,
    visits_per_core: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Through the server alone: kernel receive timestamp to the forwarded copy's send.
    sfu_p50_us: u64,
    sfu_p99_us: u64,
    sfu_max_us: u64,
    kib_per_participant: f64,
}

fn orchestrate(args: &[String]) -> anyhow::Result<()> {
    let rooms: Vec<usize> = arg(args, "--rooms")
        .unwrap_or("10,50,200")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let warmup = arg(args, "--warmup").unwrap_or("6").to_owned();
    let measure = arg(args, "--measure").unwrap_or("10").to_owned();
    let pause = args.iter().any(|a| a == "--pause-unneeded");
    // The baseline of the run: the same machine's floor, forwarding with nothing but SRTP and
    // one send per packet (the `floor` bench), before any server runs.
    let floor = floor::measure(200_000, false)?;
    println!(
        "floor on this machine: {:.2} µs of CPU per forwarded packet (SRTP {:.2} µs; {} packets, \
         {:.1} per receive call, one send each): {:.0} visits per core if that were all",
        floor.per_packet.as_secs_f64() * 1e6,
        floor.srtp.as_secs_f64() * 1e6,
        floor.forwarded,
        floor.per_receive,
        floor.visits_per_core()
    );
    let mut rows = Vec::new();
    for n in rooms {
        // The key travels to the two children on their command lines; it is random per run.
        let secret: [u8; 32] = rand::random();
        let key_hex = hex(&secret);
        let mut server = Proc::spawn(&["--server".into(), "--key".into(), key_hex.clone()])?;
        let addr = server.expect("ADDR")?;
        let url = addr.first().context("url")?.clone();
        let _udp: SocketAddr = addr.get(1).context("udp")?.parse()?;
        let (_, rss_idle, _) = server.sample()?;
        let mut gen_args = vec![
            "--loadgen".into(),
            "--url".into(),
            url,
            "--rooms".into(),
            n.to_string(),
            "--key".into(),
            key_hex,
            "--warmup".into(),
            warmup.clone(),
            "--measure".into(),
            measure.clone(),
        ];
        if pause {
            gen_args.push("--pause-unneeded".into());
        }
        let mut load = Proc::spawn(&gen_args)?;
        load.expect("MEASURE_START")?;
        let (cpu0, rss_loaded, _) = server.sample()?;
        let t0 = Instant::now();
        load.expect("MEASURE_END")?;
        let (cpu1, _, [_, sfu_p50, sfu_p99, sfu_max]) = server.sample()?;
        let wall = t0.elapsed().as_secs_f64();
        let r = load.expect("RESULT")?;
        let num = |i: usize| -> anyhow::Result<f64> {
            r.get(i)
                .ok_or_else(|| anyhow!("RESULT field {i}"))?
                .parse::<f64>()
                .map_err(Into::into)
        };
        let clients = num(0)?;
        let forwarded = num(4)? + num(5)?;
        // What the clients should send: audio at 50 packets/s and the video layers at their
        // frame rates and sizes (all three layers unless paused).
        let per_client = 50.0
            + loadgen::LAYERS
                .iter()
                .map(|(fps, bps)| {
                    let frame = f64::from(*bps) / 8.0 / f64::from(*fps);
                    f64::from(*fps) * (frame / 1100.0).ceil()
                })
                .sum::<f64>();
        let cpu_core = (cpu1 - cpu0) / wall;
        // Every room forwards 4 streams: each side's audio and video to the other side.
        let streams = 4.0 * n as f64;
        rows.push(Row {
            rooms: n,
            connected: format!("{}/{}", num(2)? as u64, clients as u64),
            forwarded_pps: forwarded,
            sent_pps: num(3)?,
            sent_share: num(3)? / (per_client * clients),
            forwarded_mbps: num(6)? / 1e6,
            cpu_core,
            cpu_per_stream_us: cpu_core * 1e6 / streams,
            times_floor: cpu_core / forwarded / floor.per_packet.as_secs_f64(),
            visits_per_core: if cpu_core > 0.0 {
                n as f64 / cpu_core
            } else {
                f64::NAN
            },
            p50_us: num(7)?,
            p99_us: num(8)?,
            max_us: num(9)?,
            sfu_p50_us: sfu_p50,
            sfu_p99_us: sfu_p99,
            sfu_max_us: sfu_max,
            kib_per_participant: rss_loaded.saturating_sub(rss_idle) as f64 / clients,
        });
        drop(load);
        drop(server);
    }
    println!();
    println!(
        "{:>5} {:>9} {:>10} {:>6} {:>10} {:>9} {:>8} {:>14} {:>7} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "rooms",
        "receiving",
        "sent pkt/s",
        "of due",
        "fwd pkt/s",
        "fwd Mb/s",
        "SFU CPU",
        "CPU/stream",
        "x floor",
        "visits/core",
        "e2e p50",
        "e2e p99",
        "e2e max",
        "SFU p50",
        "SFU p99",
        "SFU max",
        "KiB/part."
    );
    for r in &rows {
        println!(
            "{:>5} {:>9} {:>10.0} {:>5.0}% {:>10.0} {:>9.1} {:>7.1}% {:>11.1} us/s {:>7.1} {:>11.0} {:>8.0} {:>8.0} {:>8.0} {:>8} {:>8} {:>8} {:>10.0}",
            r.rooms,
            r.connected,
            r.sent_pps,
            r.sent_share * 100.0,
            r.forwarded_pps,
            r.forwarded_mbps,
            r.cpu_core * 100.0,
            r.cpu_per_stream_us,
            r.times_floor,
            r.visits_per_core,
            r.p50_us,
            r.p99_us,
            r.max_us,
            r.sfu_p50_us,
            r.sfu_p99_us,
            r.sfu_max_us,
            r.kib_per_participant,
        );
    }
    println!(
        "\nDelays in microseconds. e2e: publisher's clock before its stack to the receiver's \
         kernel timestamp, through two loopback hops, the SFU and the scheduling of both \
         processes on shared cores. SFU: the server's own added delay, from the kernel's receive \
         timestamp of a media packet to the send of each forwarded copy (str0m's pacer \
         included), at 6% resolution. CPU/stream: server CPU time per second per forwarded \
         stream (4 per room). x floor: server CPU per forwarded packet over the floor's, \
         measured first (with all three layers flowing the server also receives the layers it \
         does not forward, so compare with --pause-unneeded). visits/core: rooms / server CPU share (the server runs on one \
         thread). \"of due\": packets sent over what the clients should send (below 100% the \
         load generator did not keep up; with --pause-unneeded it is lower by design)."
    );
    Ok(())
}
