//! A network partition for real: a network namespace of its own ([`Netns`]), linked to this
//! machine by a veth pair with a /30 from 10.213.0.0/16, in which a process (a manager, run
//! with `ip netns exec`) reaches a nats-server listening on the host side of the link. The
//! test cuts the link with iptables DROP rules inside the namespace, so the process's TCP
//! connections stall rather than reset, as behind a failed switch or a black-holing firewall
//! (a gray failure: nobody is told anything), and heals it by removing them. It can also cut
//! one way first: what the namespace sends is lost while what it is sent still arrives, so
//! the process goes on hearing and deciding while nothing it says gets out.
//!
//! Needs root (CAP_NET_ADMIN), `ip` and `iptables`. Everything is removed when the [`Netns`]
//! is dropped: the namespace, and with it the link and the rules.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

/// The range the links' /30s are taken from.
const RANGE: (u8, u8) = (10, 213);

/// A network namespace linked to this machine; see the module's documentation.
pub struct Netns {
    name: String,
    /// The host side of the veth pair (the other side is in the namespace).
    host_link: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    /// Whether what the namespace sends to the host side is dropped now.
    outgoing_cut: bool,
    /// Whether what the host side sends to the namespace is dropped now.
    incoming_cut: bool,
}

impl Netns {
    /// A new namespace `cubeha-<random>`, linked to this machine by a /30 chosen at random in
    /// 10.213.0.0/16 (one that no interface here uses yet), with loopback up inside.
    pub fn create() -> Result<Netns> {
        let id = Uuid::new_v4().simple().to_string();
        let (host_ip, ns_ip) = free_link()?;
        // Interface names are at most 15 characters.
        let ns = Netns {
            name: format!("cubeha-{}", &id[..8]),
            host_link: format!("cha{}h", &id[..8]),
            host_ip,
            ns_ip,
            outgoing_cut: false,
            incoming_cut: false,
        };
        let peer = format!("cha{}n", &id[..8]);
        ip(&["netns", "add", &ns.name])?;
        // From here on, a failure drops `ns`, which removes what was made.
        ip(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &ns.host_link,
        ])?;
        ip(&["link", "set", &ns.host_link, "up"])?;
        ns.exec_ok("ip", &["addr", "add", &format!("{ns_ip}/30"), "dev", &peer])?;
        ns.exec_ok("ip", &["link", "set", &peer, "up"])?;
        ns.exec_ok("ip", &["link", "set", "lo", "up"])?;
        tracing::info!(netns = %ns.name, %host_ip, %ns_ip, "network namespace created");
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This machine's address on the link: what a server for the namespace listens on.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address on the link.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The words that run a command inside the namespace: `ip netns exec NAME` (which execs
    /// the command, so its pid is the one spawned).
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// Whether the link is cut now, either way.
    pub fn is_cut(&self) -> bool {
        self.outgoing_cut || self.incoming_cut
    }

    /// Cuts the namespace off from this machine: every packet between it and the host side
    /// of the link is dropped, both ways, without a reset or an ICMP error. Connections stay
    /// open and go silent. (After [`Netns::cut_outgoing`], this completes the cut.)
    pub fn cut(&mut self) -> Result<()> {
        if self.outgoing_cut && self.incoming_cut {
            bail!("the link of {} is already cut", self.name);
        }
        // Outgoing first: from the first rule on, nothing the process sends gets through.
        if !self.outgoing_cut {
            self.rule("-I", Way::Outgoing)?;
            self.outgoing_cut = true;
        }
        self.rule("-I", Way::Incoming)?;
        self.incoming_cut = true;
        tracing::info!(netns = %self.name, "link cut");
        Ok(())
    }

    /// Cuts one way: what the namespace sends to the host side is dropped, what it is sent
    /// still arrives. A process inside keeps receiving on its connections for a while (until
    /// the sender stops for want of TCP acknowledgements), and whatever it sends stalls in
    /// its socket, to go out only once healed.
    pub fn cut_outgoing(&mut self) -> Result<()> {
        if self.outgoing_cut {
            bail!("the link of {} is already cut outgoing", self.name);
        }
        self.rule("-I", Way::Outgoing)?;
        self.outgoing_cut = true;
        tracing::info!(netns = %self.name, "link cut outgoing");
        Ok(())
    }

    /// Heals a cut: the dropping rules are removed, and stalled connections resume (TCP
    /// retransmits what was lost) unless a peer has given up on them meanwhile.
    pub fn heal(&mut self) -> Result<()> {
        if !self.is_cut() {
            bail!("the link of {} is not cut", self.name);
        }
        if self.incoming_cut {
            self.rule("-D", Way::Incoming)?;
            self.incoming_cut = false;
        }
        if self.outgoing_cut {
            self.rule("-D", Way::Outgoing)?;
            self.outgoing_cut = false;
        }
        tracing::info!(netns = %self.name, "link healed");
        Ok(())
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule that drops one way of the link.
    fn rule(&self, op: &str, way: Way) -> Result<()> {
        let host = self.host_ip.to_string();
        let (chain, dir) = match way {
            Way::Outgoing => ("OUTPUT", "-d"),
            Way::Incoming => ("INPUT", "-s"),
        };
        self.exec_ok("iptables", &["-w", op, chain, dir, &host, "-j", "DROP"])
    }

    /// Runs `program args` inside the namespace and fails with its output unless it succeeds.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    /// Removes the namespace; the link (both ends) and the rules go with it once no process
    /// runs in it. The host end is removed too, in case a process still holds the namespace.
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_link]);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("removing network namespace {}: {e:#}", self.name);
        }
    }
}

/// One way of the link, as seen from the namespace.
#[derive(Clone, Copy)]
enum Way {
    Outgoing,
    Incoming,
}

/// Runs `ip args`; fails with its output unless it succeeds.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
        );
    }
    Ok(())
}

/// A /30 of [`RANGE`] no interface here has an address in: its first and second hosts.
fn free_link() -> Result<(Ipv4Addr, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running `ip -4 addr show`")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    for _ in 0..100 {
        let block = (Uuid::new_v4().as_u128() % (1 << 14)) as u32 * 4;
        let (hi, lo) = ((block >> 8) as u8, (block & 0xff) as u8);
        let taken =
            (0..4).any(|i| used.contains(&format!(" {}.{}.{hi}.{}/", RANGE.0, RANGE.1, lo + i)));
        if !taken {
            let net = [RANGE.0, RANGE.1, hi, lo];
            let host = Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1);
            let ns = Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2);
            return Ok((host, ns));
        }
    }
    bail!("no free /30 in {}.{}.0.0/16", RANGE.0, RANGE.1)
}
