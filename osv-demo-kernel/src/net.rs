//! Networking in the demo kernel: osv-virtio's virtio-net driver under
//! smoltcp, against QEMU user networking (slirp).
//!
//! The runner (xtask) starts QEMU with `-netdev user,restrict=on,...`: the
//! guest is 10.0.2.15/24, the gateway (slirp itself) 10.0.2.2, and
//! `restrict=on` keeps the guest off the host's and the outside networks;
//! only the runner's `hostfwd` rule (127.0.0.1 on the host to the guest's
//! TCP port [`TCP_PORT`]) reaches in. (TCP, not UDP: with `restrict=on`
//! slirp drops every UDP datagram from the guest, replies to a `hostfwd`
//! included, while an established `hostfwd` TCP connection is allowed;
//! found by experiment with QEMU's slirp.) The tests:
//! - ARP for the gateway through the driver's own API (`transmit`,
//!   `receive`), then ICMP echo to it through smoltcp (slirp answers pings
//!   to its own address inside QEMU);
//! - a TCP exchange with the runner on the host: it sends a random nonce,
//!   the guest answers with a transform of it, and the runner confirms
//!   (`osv-net-ok`) only if the answer is right; only then does the test
//!   pass.
//!
//! Without a net device (the plain QEMU command) the tests skip; with
//! `expect=virtio-net` on the command line they fail instead.

use crate::check;
use crate::ktest::{NotPassed, Outcome, Test};
use crate::virtio::{AnyTransport, HeapHal, Irq, IrqRoute, IrqWait};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use osv_boot::{println, BootInfo};
use osv_virtio::irq::Wait;
use osv_virtio::net::VirtIONet;
use osv_virtio::{DeviceType, MmioTransport, PciTransport, VolatileMmio};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};

pub static ALL: &[Test] = &[
    Test { name: "net::arp_and_ping_the_gateway", run: arp_and_ping },
    Test { name: "net::tcp_exchange_with_the_host", run: tcp_with_host },
    Test { name: "net::ping_polling_vs_interrupts", run: ping_modes },
];

/// QEMU user networking's default addressing (`-netdev user`: net
/// 10.0.2.0/24, host/gateway .2, first DHCP address .15).
const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const GATEWAY: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
/// The guest port the runner's `hostfwd=tcp:127.0.0.1:PORT-:5555` targets
/// (xtask/src/qemu.rs, `GUEST_TCP_PORT`).
pub const TCP_PORT: u16 = 5555;

/// The driver on either transport.
enum Net {
    Mmio(VirtIONet<HeapHal, MmioTransport<VolatileMmio>>),
    Pci(VirtIONet<HeapHal, PciTransport<VolatileMmio>>),
}

macro_rules! with_net {
    ($net:expr, $n:ident => $e:expr) => {
        match $net {
            Net::Mmio($n) => $e,
            Net::Pci($n) => $e,
        }
    };
}

/// The device, driven from the first test that needs it, with its receive
/// queue's interrupt if it could be routed (or why not).
static NET: spin::Mutex<Option<(Net, String, RxIrq)>> = spin::Mutex::new(None);

/// The receive queue's interrupt, or why there is none.
type RxIrq = Result<Irq, &'static str>;

fn now() -> Instant {
    Instant::from_micros((osv_boot::rt::now_ns() / 1000) as i64)
}

/// Runs `f` on the driver, starting it on first use; a skip (or a failure
/// under `expect=virtio-net`) without a device.
fn with_device<R>(
    boot: &'static BootInfo,
    f: impl FnOnce(&mut Net, &str) -> Result<R, NotPassed>,
) -> Result<R, NotPassed> {
    with_device_irq(boot, |net, at, _| f(net, at))
}

/// [`with_device`] with the receive interrupt.
fn with_device_irq<R>(
    boot: &'static BootInfo,
    f: impl FnOnce(&mut Net, &str, &RxIrq) -> Result<R, NotPassed>,
) -> Result<R, NotPassed> {
    let mut slot = NET.lock();
    if slot.is_none() {
        let Some(found) = crate::virtio::take(DeviceType::Net) else {
            return Err(crate::tests::missing(boot, "virtio-net"));
        };
        let mut net = match found.transport {
            AnyTransport::Mmio(t) => VirtIONet::new(&HeapHal, t).map(Net::Mmio),
            AnyTransport::Pci(t) => VirtIONet::new(&HeapHal, t).map(Net::Pci),
        }
        .map_err(|e| format!("virtio-net at {}: {e}", found.location))?;
        // The receive queue (0) interrupts; the transmit queue is reclaimed
        // when sending, so it needs none.
        let irq = match (&mut net, found.irq) {
            (Net::Pci(n), IrqRoute::Pci(dev)) => crate::virtio::route_pci(&dev, n.transport_mut(), 0),
            (Net::Mmio(_), IrqRoute::Mmio { base, size, gsi }) => crate::virtio::route_mmio(base, size, gsi),
            _ => Err("no interrupt line known"),
        };
        *slot = Some((net, found.location, irq));
    }
    let Some((net, at, irq)) = slot.as_mut() else { return Err("no device".into()) };
    f(net, at, irq)
}

fn interface<D: Device>(dev: &mut D, mac: [u8; 6]) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = osv_boot::arch::rdtsc();
    let mut iface = Interface::new(config, dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(GUEST.into(), 24));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
    iface
}

/// A locally administered address if the device gives none (§5.1.5).
const FALLBACK_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x00, 0x02, 0x0f];

fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    buf
}

/// The gateway's MAC if `frame` is its ARP reply to us.
fn arp_reply_from_gateway(frame: &[u8], mac: [u8; 6]) -> Option<EthernetAddress> {
    let f = EthernetFrame::new_checked(frame).ok()?;
    if f.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    match ArpRepr::parse(&ArpPacket::new_checked(f.payload()).ok()?).ok()? {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            target_hardware_addr,
        } if source_protocol_addr == GATEWAY
            && target_protocol_addr == GUEST
            && target_hardware_addr == EthernetAddress(mac) =>
        {
            Some(source_hardware_addr)
        }
        _ => None,
    }
}

const ARP_TIMEOUT_MS: u64 = 3000;
const PING_TIMEOUT_MS: u64 = 3000;
const PINGS: u16 = 20;

fn arp_and_ping(boot: &'static BootInfo) -> Outcome {
    with_device(boot, |net, at| {
        let (mac, link) = with_net!(net, n => (n.mac(), n.link_up()));
        check!(link == Ok(true), "virtio-net at {at}: link {link:?}");
        let mac = mac.unwrap_or(FALLBACK_MAC);
        check!(mac != [0; 6], "all-zero MAC from the device");
        // ARP through the driver's own API: request, then look for the reply
        // among whatever arrives (the runner's connection attempts may be there too).
        let req = arp_request(mac);
        let start = osv_boot::rt::now_ns();
        let mut gw = None;
        let mut sent_at = 0;
        while gw.is_none() {
            let t = (osv_boot::rt::now_ns() - start) / 1_000_000;
            check!(t < ARP_TIMEOUT_MS, "no ARP reply from {GATEWAY} in {ARP_TIMEOUT_MS} ms");
            if t >= sent_at {
                with_net!(net, n => n.transmit(&req)).map_err(|e| format!("transmit ARP: {e}"))?;
                sent_at = t + 500;
            }
            match with_net!(net, n => n.receive(|f| arp_reply_from_gateway(f, mac))) {
                Ok(Some(r)) => gw = r,
                Ok(None) => core::hint::spin_loop(),
                Err(e) => return Err(format!("receive: {e}").into()),
            }
        }
        let gw = gw.ok_or("unreachable")?;
        check!(gw.is_unicast() && gw != EthernetAddress(mac), "gateway MAC {gw}");
        println!("net: {at}: MAC {}, gateway {GATEWAY} is at {gw}", EthernetAddress(mac));

        // ICMP echo through smoltcp.
        let before = with_net!(net, n => n.stats());
        let (rtts, elapsed, _) = with_net!(net, n => ping(n, mac, &mut PingWait::Spin))?;
        let after = with_net!(net, n => n.stats());
        println!(
            "net: {PINGS} ICMP echo round trips to {GATEWAY} in {} us (median {} us); driver rx {} / tx {} packets, {} rx errors, {} resets",
            elapsed / 1000,
            rtts[rtts.len() / 2] / 1000,
            after.rx_packets - before.rx_packets,
            after.tx_packets - before.tx_packets,
            after.rx_errors,
            after.resets,
        );
        check!(after.resets == 0 && after.rx_errors == 0, "driver errors: {after:?}");
        Ok(())
    })
}

/// How the ping loop waits for a reply: spin (polling), or park until the
/// receive queue's interrupt.
enum PingWait<'a> {
    Spin,
    Irq(&'a mut IrqWait),
}

/// What the ping loop needs besides smoltcp's `Device`: whether a frame
/// waits in the receive queue (checked after registering for the interrupt).
trait RxPending {
    fn rx_pending(&self) -> bool;
}

impl<H: osv_virtio::Hal, T: osv_virtio::Transport> RxPending for VirtIONet<H, T> {
    fn rx_pending(&self) -> bool {
        VirtIONet::rx_pending(self)
    }
}

/// Sends [`PINGS`] echo requests one after the other; returns the sorted
/// round-trip times (ns), the total, and the nanoseconds spent parked.
fn ping<D: Device + RxPending>(
    dev: &mut D,
    mac: [u8; 6],
    wait: &mut PingWait<'_>,
) -> Result<(Vec<u64>, u64, u64), NotPassed> {
    let mut iface = interface(dev, mac);
    let mut sockets = SocketSet::new(vec![]);
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]);
    let h = sockets.add(icmp::Socket::new(rx, tx));
    let ident = 0x05f5;
    sockets
        .get_mut::<icmp::Socket>(h)
        .bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| format!("bind: {e}"))?;
    let payload = *b"osv demo kernel ping payload....";
    let mut rtts = Vec::new();
    let all = osv_boot::rt::now_ns();
    for seq in 0..PINGS {
        let start = osv_boot::rt::now_ns();
        let mut sent = false;
        if let PingWait::Irq(w) = wait {
            w.rearm();
        }
        loop {
            iface.poll(now(), dev, &mut sockets);
            let s = sockets.get_mut::<icmp::Socket>(h);
            if !sent && s.can_send() {
                let req = Icmpv4Repr::EchoRequest { ident, seq_no: seq, data: &payload };
                let buf =
                    s.send(req.buffer_len(), IpAddress::Ipv4(GATEWAY)).map_err(|e| format!("send: {e}"))?;
                req.emit(&mut Icmpv4Packet::new_unchecked(buf), &Default::default());
                sent = true;
                continue;
            }
            if s.can_recv() {
                let (data, from) = s.recv().map_err(|e| format!("recv: {e}"))?;
                let pkt = Icmpv4Packet::new_checked(data).map_err(|e| format!("reply: {e}"))?;
                let repr = Icmpv4Repr::parse(&pkt, &Default::default()).map_err(|e| format!("reply: {e}"))?;
                if let Icmpv4Repr::EchoReply { ident: i, seq_no, data } = repr {
                    check!(from == IpAddress::Ipv4(GATEWAY), "reply from {from}");
                    check!(i == ident && data == payload, "reply ident {i}, data {data:?}");
                    if seq_no == seq {
                        break;
                    }
                }
            }
            let waited = osv_boot::rt::now_ns() - start;
            check!(
                waited < PING_TIMEOUT_MS * 1_000_000,
                "no echo reply {seq} from {GATEWAY} in {PING_TIMEOUT_MS} ms (sent: {sent})"
            );
            match wait {
                PingWait::Spin => core::hint::spin_loop(),
                PingWait::Irq(w) => {
                    // Register, then look (no lost wakeup, osv_virtio::irq).
                    w.prepare();
                    if !dev.rx_pending() && !w.wait() {
                        w.done();
                        return Err(format!("echo reply {seq}: the receive interrupt never came").into());
                    }
                    w.done();
                }
            }
        }
        rtts.push(osv_boot::rt::now_ns() - start);
    }
    let total = osv_boot::rt::now_ns() - all;
    rtts.sort_unstable();
    let parked = match wait {
        PingWait::Spin => 0,
        PingWait::Irq(w) => w.parked_ns(),
    };
    Ok((rtts, total, parked))
}

/// The same ICMP echo round trips polled and then interrupt-driven, back to
/// back: per round trip, all the guest's time (polling spins, so all of it
/// is the guest's work) against the interrupt mode's time and its time
/// without the parked spans (under `-icount`, instructions; the parked span
/// also holds the switch to idle and back and the handler).
fn ping_modes(boot: &'static BootInfo) -> Outcome {
    crate::virtio::enable_thread_waits(boot).map_err(|e| format!("scheduler: {e}"))?;
    // From a scheduler thread (interrupts enabled; the boot thread `main`
    // runs the tests with them off), as an application would.
    let t = crate::threads::spawn("net-ping", move || {
        let r = ping_modes_thread(boot);
        *PING_MODES.lock() = Some(r);
    });
    let _ = t.join();
    PING_MODES.lock().take().unwrap_or_else(|| Err("the ping thread left no result".into()))
}

static PING_MODES: spin::Mutex<Option<Outcome>> = spin::Mutex::new(None);

fn ping_modes_thread(boot: &'static BootInfo) -> Outcome {
    with_device_irq(boot, |net, at, irq| {
        let irq = irq.as_ref().map_err(|why| format!("virtio-net at {at}: no receive interrupt: {why}"))?;
        check!(irq.ready(), "virtio-net at {at}: the interrupt route is not programmed");
        let mac = with_net!(net, n => n.mac()).unwrap_or(FALLBACK_MAC);
        with_net!(net, n => n.set_interrupts(false));
        let irqs0 = irq.interrupts();
        let (poll_rtts, poll_total, _) = with_net!(net, n => ping(n, mac, &mut PingWait::Spin))?;
        let poll_irqs = irq.interrupts() - irqs0;
        let mut w = irq.waiter();
        with_net!(net, n => n.set_interrupts(true));
        let irqs0 = irq.interrupts();
        let r = with_net!(net, n => ping(n, mac, &mut PingWait::Irq(&mut w)));
        with_net!(net, n => n.set_interrupts(false));
        crate::virtio::quiesce_watchdog();
        let (irq_rtts, irq_total, parked) = r?;
        let irqs = irq.interrupts() - irqs0;
        check!(poll_irqs == 0, "polling mode took {poll_irqs} interrupts");
        // slirp often answers inside the transmit's notify, so a round trip
        // may find its reply without parking; the receive interrupt comes
        // all the same.
        check!(irqs > 0, "interrupt mode: no receive interrupt ({} parks)", w.parks());
        let n = u64::from(PINGS);
        let unit =
            if boot.cmdline.has_flag("icount") { "guest instructions" } else { "ns (TCG wall time, noisy)" };
        println!(
            "net: ICMP echo to {GATEWAY}, {PINGS} round trips per mode: polling {} {unit} per round trip (median {}); interrupts {} per round trip (median {}), {} without the parked time ({irqs} interrupts, {} parks)",
            poll_total / n,
            poll_rtts[poll_rtts.len() / 2],
            irq_total / n,
            irq_rtts[irq_rtts.len() / 2],
            (irq_total - parked) / n,
            w.parks(),
        );
        Ok(())
    })
}

const TCP_TIMEOUT_MS: u64 = 20_000;

/// The answer the runner expects to `osv-net-probe <nonce>`: the nonce
/// reversed (xtask/src/qemu.rs, `tcp_peer`).
fn answer(probe: &[u8]) -> Option<Vec<u8>> {
    let nonce = probe.strip_prefix(b"osv-net-probe ")?;
    if nonce.is_empty() || nonce.len() > 64 {
        return None;
    }
    let mut r = b"osv-net-reply ".to_vec();
    r.extend(nonce.iter().rev());
    r.push(b'\n');
    Some(r)
}

fn tcp_with_host(boot: &'static BootInfo) -> Outcome {
    let peer = boot.cmdline.has_flag("net.tcp_peer");
    with_device(boot, |net, _at| {
        if !peer {
            return Err(NotPassed::Skipped(
                "no TCP peer (the runner adds net.tcp_peer with its hostfwd rule)".into(),
            ));
        }
        let mac = with_net!(net, n => n.mac()).unwrap_or(FALLBACK_MAC);
        let (nonce, us, conns) = with_net!(net, n => tcp_exchange(n, mac))?;
        println!(
            "net: TCP exchange with the host runner confirmed (nonce {} bytes, {conns} connection(s)) in {us} us",
            nonce.len()
        );
        Ok(())
    })
}

/// Listens on [`TCP_PORT`]; per connection, answers the runner's probe
/// line and returns on its confirmation: (nonce, microseconds,
/// connections seen).
fn tcp_exchange<D: Device>(dev: &mut D, mac: [u8; 6]) -> Result<(Vec<u8>, u64, u32), NotPassed> {
    let mut iface = interface(dev, mac);
    let mut sockets = SocketSet::new(vec![]);
    let rx = tcp::SocketBuffer::new(vec![0; 2048]);
    let tx = tcp::SocketBuffer::new(vec![0; 2048]);
    let h = sockets.add(tcp::Socket::new(rx, tx));
    let start = osv_boot::rt::now_ns();
    let mut line: Vec<u8> = Vec::new();
    let mut answered = false;
    let mut conns = 0u32;
    let mut was_active = false;
    loop {
        iface.poll(now(), dev, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        let t = (osv_boot::rt::now_ns() - start) / 1_000_000;
        if !s.is_open() {
            // A new connection per attempt of the runner.
            line.clear();
            answered = false;
            s.listen(TCP_PORT).map_err(|e| format!("listen: {e}"))?;
        }
        if s.is_active() && !was_active {
            conns += 1;
        }
        was_active = s.is_active();
        if s.can_recv() {
            s.recv(|d| (d.len(), line.extend_from_slice(d))).map_err(|e| format!("recv: {e}"))?;
        }
        check!(line.len() <= 512, "runaway line from the host");
        while let Some(nl) = line.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = line.drain(..=nl).take(nl).collect();
            if let Some(a) = answer(&l) {
                check!(s.send_slice(&a) == Ok(a.len()), "send buffer full");
                answered = true;
            } else if let Some(nonce) = l.strip_prefix(b"osv-net-ok ") {
                check!(answered, "confirmation before any answer");
                s.close();
                // Let the FIN go out (the runner waits for it), briefly.
                let done = osv_boot::rt::now_ns();
                while osv_boot::rt::now_ns() - done < 50_000_000 {
                    iface.poll(now(), dev, &mut sockets);
                    if !sockets.get::<tcp::Socket>(h).is_open() {
                        break;
                    }
                }
                return Ok((nonce.to_vec(), (osv_boot::rt::now_ns() - start) / 1000, conns));
            } else {
                return Err(format!("the host says: {}", String::from_utf8_lossy(&l)).into());
            }
        }
        // The runner gives up on a connection that the guest picks up late
        // (slirp queued the SYN while another test ran): once the peer has
        // closed, drop it and listen again.
        if matches!(
            s.state(),
            tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
        ) {
            s.abort();
        }
        check!(
            t < TCP_TIMEOUT_MS,
            "no exchange with the host in {TCP_TIMEOUT_MS} ms ({conns} connection(s), answered: {answered})"
        );
        core::hint::spin_loop();
    }
}
