//! Tests of the test harness itself, without the SFU: the webrtc-rs peer publishes audio and
//! three simulcast layers that another webrtc-rs peer receives intact, and the relay limits rate
//! and drops as configured. If these fail, the end-to-end tests would fail for the wrong reason.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::peer::{Publish, TestPeer};
use support::relay::{Relay, Shape};
use tokio::net::UdpSocket;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_peers_carry_audio_and_three_simulcast_layers() -> anyhow::Result<()> {
    let publisher = TestPeer::new(
        LOOPBACK,
        7,
        Publish {
            audio: true,
            video: true,
        },
    )
    .await?;
    let viewer = TestPeer::new(
        LOOPBACK,
        8,
        Publish {
            audio: false,
            video: false,
        },
    )
    .await?;

    let offer = publisher.offer().await?;
    assert!(offer.contains("a=simulcast:send q;h;f"), "{offer}");
    let answer = viewer.answer(offer).await?;
    publisher.accept_answer(answer).await?;
    publisher.connected(Duration::from_secs(10)).await?;
    publisher.start_media().await?;

    let r = viewer
        .wait_for(Duration::from_secs(10), "audio and all layers", |r| {
            r.audio(7).packets >= 25 && r.video(7).per_layer.iter().all(|n| *n >= 5)
        })
        .await?;
    let video = r.video(7);
    assert_eq!(video.corrupt, 0);
    assert_eq!(r.tracks.get(&(0, true)).map_or(0, |c| c.corrupt), 0);
    // Without an SFU the three layers arrive as three SSRCs.
    assert_eq!(video.ssrcs.len(), 3, "{video:?}");
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

async fn blast(to: SocketAddr, packets: usize, size: usize) -> anyhow::Result<UdpSocket> {
    let sock = UdpSocket::bind((LOOPBACK, 0)).await?;
    for i in 0..packets {
        let mut p = vec![0u8; size];
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        sock.send_to(&p, to).await?;
    }
    Ok(sock)
}

#[tokio::test]
async fn relay_limits_rate_and_drops_past_its_buffer() -> anyhow::Result<()> {
    let server = UdpSocket::bind((LOOPBACK, 0)).await?;
    let relay = Relay::start(server.local_addr()?).await?;
    // 800 kbit/s with a 100 ms buffer holds ~10 KB: about 9 packets of 1,000 bytes (+28 of
    // headers) queue, the rest of a 40-packet burst is dropped. (Bursts much larger than this
    // overflow the relay socket's kernel receive buffer before the relay sees them.)
    relay.set_uplink(Shape {
        rate_bps: Some(800_000),
        max_queue: Duration::from_millis(100),
        loss: 0.0,
    });
    let started = Instant::now();
    let _client = blast(relay.addr(), 40, 1000).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), server.recv(&mut buf)).await
    {
        got.push((n, started.elapsed()));
    }
    let (up, _) = relay.counters();
    assert!(
        (9..=12).contains(&got.len()),
        "{} packets passed",
        got.len()
    );
    assert_eq!(up.forwarded as usize, got.len());
    assert_eq!(up.dropped_queue as usize, 40 - got.len());
    // Serialized at the link rate: 1,028 bytes at 800 kbit/s is 10.3 ms per packet.
    let last = got.last().map(|(_, t)| *t).unwrap_or_default();
    assert!(
        last >= Duration::from_millis(90),
        "last packet after {last:?}"
    );
    Ok(())
}

#[tokio::test]
async fn relay_passes_everything_when_open_and_drops_at_the_loss_rate() -> anyhow::Result<()> {
    let server = UdpSocket::bind((LOOPBACK, 0)).await?;
    let relay = Relay::start(server.local_addr()?).await?;
    let client = blast(relay.addr(), 50, 200).await?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let mut upstream = None;
    while let Ok(Ok((_, from))) =
        tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut buf)).await
    {
        n += 1;
        upstream = Some(from);
    }
    assert_eq!(n, 50);

    // The server's reply goes back to the client through the relay.
    let upstream = upstream.ok_or_else(|| anyhow::anyhow!("nothing relayed"))?;
    server.send_to(b"pong", upstream).await?;
    let (len, _) =
        tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await??;
    assert_eq!(&buf[..len], b"pong");

    relay.set_downlink(Shape {
        loss: 0.5,
        ..Shape::open()
    });
    relay.set_uplink(Shape {
        loss: 0.5,
        ..Shape::open()
    });
    let mut passed = 0;
    for _ in 0..4 {
        // In rounds of 100, well within the socket buffers.
        let _ = blast(relay.addr(), 100, 100).await?;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), server.recv(&mut buf)).await
        {
            passed += 1;
        }
    }
    // Binomial(400, 0.5): 200 ± 10; outside 130..270 is beyond 7 standard deviations.
    assert!(
        (130..270).contains(&passed),
        "{passed} of 400 passed at 50% loss"
    );
    let (up, _) = relay.counters();
    assert_eq!(up.dropped_loss as usize, 400 - passed);
    Ok(())
}
