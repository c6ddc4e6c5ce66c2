//! A private network of Linux network namespaces, and faults made by the
//! kernel in it.
//!
//! Topology: one namespace holds a Linux bridge; each host is a namespace of
//! its own with one veth (`eth0`) whose other end is a port of that bridge,
//! and an address in a private /22 (10.213.X.0/22, X a multiple of 4 chosen
//! per run among the subnets this machine does not use): host `i` at offset
//! 10 + i, and its second address (after a move) at offset 512 + 10 + i, so
//! up to 500 hosts. One more veth joins the root namespace to the bridge
//! with offset 1 (10.213.X.1), so that the test process reaches the nodes
//! and the nodes reach services the test runs (a Kafka broker). Nothing
//! routes out of the /22: the hosts have no default route.
//!
//! Faults are nftables rules in one table of our own per host
//! (`table inet rumorfault`, one `input` chain), so that healing is one
//! `flush table`. They act on the packets a host receives.
//!
//! Names carry the test process's pid and a per-process counter
//! (`rumornet-<pid>x<n>-h3`, veths `rn<pid>x<n>h3`), so runs never collide,
//! and leftovers of runs whose process is gone are deleted at start.
//! Everything is deleted when the [`Net`] drops, also on a panic.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of our namespace names.
const NS_PREFIX: &str = "rumornet-";
/// Prefix of our interface names in the root namespace (at most 15 characters in all).
const LINK_PREFIX: &str = "rn";
/// The first octets of the private subnets we use: 10.213.X.0/22.
const NET: [u8; 2] = [10, 213];
/// The prefix length of each network's subnet: 1,024 addresses.
const PREFIX_LEN: u8 = 22;
/// Hosts a network holds: offsets 10 to 509, and 522 to 1021 after a move.
pub(crate) const MAX_HOSTS: usize = 500;
/// Where a host's address moves to: this much above its first.
const MOVED: u16 = 512;
/// Our nftables table in each host.
const TABLE: &str = "inet rumorfault";

/// Runs a command; its stdout, or an error naming it with its stderr.
pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
        ))
    }
}

/// Runs a command that must succeed.
fn must(args: &[&str]) -> String {
    run(args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Why the network tests cannot run here, if they cannot: they need root,
/// `ip` (iproute2) and `nft` (nftables).
pub(crate) fn missing_requirements() -> Option<String> {
    let uid = run(&["id", "-u"], None).unwrap_or_default();
    if uid.trim() != "0" {
        return Some(format!("not root (uid {})", uid.trim()));
    }
    for tool in ["ip", "nft"] {
        if run(&["sh", "-c", &format!("command -v {tool}")], None).is_err() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// One host: a namespace with one address on the bridge.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) ns: String,
    pub(crate) addr: Ipv4Addr,
}

/// The packets a loss rule drops from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// Every IPv4 packet: gossip (UDP and TCP), gRPC, Kafka, HTTP.
    All,
    /// UDP only: the gossip probes and broadcasts, not the TCP streams.
    Udp,
}

impl Traffic {
    fn matcher(self) -> &'static str {
        match self {
            Traffic::All => "meta nfproto ipv4",
            Traffic::Udp => "meta l4proto udp",
        }
    }
}

/// The nft expression that matches `percent`% of packets (nothing: all of them).
fn chance(percent: u32) -> String {
    if percent >= 100 {
        String::new()
    } else {
        format!("numgen random mod 100 < {percent}")
    }
}

/// The network; deleted when dropped.
pub(crate) struct Net {
    /// `<pid>x<n>`: this network's part of every name.
    tag: String,
    /// X of 10.213.X.0/22.
    pub(crate) subnet: u8,
    bridge_ns: String,
    root_link: String,
    pub(crate) hosts: Vec<Host>,
    /// The neighbour-table thresholds this network raised, to restore.
    neighbours: Option<[String; 3]>,
}

static NETS: AtomicU32 = AtomicU32::new(0);

/// The kernel's neighbour (ARP) table thresholds, one table for every
/// namespace: past `gc_thresh3` entries it evicts by force and drops
/// packets while it resolves addresses again.
const GC_THRESH: [&str; 3] = [
    "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2",
    "net.ipv4.neigh.default.gc_thresh3",
];

/// Raises the neighbour-table thresholds so that every host can hold an
/// entry for every other (n² in all; the defaults, 128/512/1,024, overflow
/// near 30 hosts). Returns the values to restore, if it changed them.
fn make_neighbour_room(hosts: usize) -> Option<[String; 3]> {
    let need = (hosts + 1) * (hosts + 1);
    let now = GC_THRESH.map(|k| must(&["sysctl", "-n", k]).trim().to_owned());
    if now[2].parse::<usize>().unwrap_or(0) >= 2 * need {
        return None;
    }
    for (k, v) in GC_THRESH.iter().zip([need / 2, need, 2 * need]) {
        must(&["sysctl", "-qw", &format!("{k}={v}")]);
    }
    Some(now)
}

/// Runs `f` for each of `hosts` at once (a few at a time), so that a fault
/// over many hosts takes effect together rather than one host after another.
fn each_host(hosts: &[usize], f: impl Fn(usize) + Sync) {
    let chunk = hosts.len().div_ceil(16).max(1);
    std::thread::scope(|s| {
        for part in hosts.chunks(chunk) {
            let f = &f;
            s.spawn(move || part.iter().for_each(|&h| f(h)));
        }
    });
}

impl Net {
    /// Builds a bridge and `n` hosts at offsets 10, 11, ... of 10.213.X.0/22.
    pub(crate) fn create(n: usize) -> Net {
        assert!(n <= MAX_HOSTS, "a network holds at most {MAX_HOSTS} hosts");
        delete_leftovers();
        let pid = std::process::id();
        let serial = NETS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}x{serial}");
        let mut net = Net {
            bridge_ns: format!("{NS_PREFIX}{tag}-br"),
            root_link: format!("{LINK_PREFIX}{tag}r"),
            tag,
            subnet: 0,
            hosts: Vec::new(),
            neighbours: make_neighbour_room(n),
        };
        // From here on, a panic drops `net`, which deletes what exists.
        let br = net.bridge_ns.clone();
        must(&["ip", "netns", "add", &br]);
        must(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &br, "link", "set", "br0", "up"]);

        // The root namespace's port, .1.
        let root = net.root_link.clone();
        net.plug(&root, None);
        net.subnet = claim_subnet(&root, pid.wrapping_mul(7).wrapping_add(serial * 31));
        must(&["ip", "link", "set", &root, "up"]);

        for i in 0..n {
            let ns = format!("{NS_PREFIX}{}-h{i}", net.tag);
            must(&["ip", "netns", "add", &ns]);
            net.hosts.push(Host {
                ns: ns.clone(),
                addr: net.ip(10 + i as u16),
            });
            let link = format!("{LINK_PREFIX}{}h{i}", net.tag);
            net.plug(&link, Some(&ns));
            must(&["ip", "-n", &ns, "link", "set", &link, "name", "eth0"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            let addr = format!("{}/{PREFIX_LEN}", net.hosts[i].addr);
            must(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            net.nft(
                i,
                &format!("add table {TABLE}\nadd chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n"),
            );
        }
        net
    }

    /// The address `offset` places into 10.213.X.0/22.
    pub(crate) fn ip(&self, offset: u16) -> Ipv4Addr {
        assert!(
            offset < 1 << (32 - PREFIX_LEN),
            "offset {offset} outside a /{PREFIX_LEN}"
        );
        Ipv4Addr::new(NET[0], NET[1], self.subnet + (offset >> 8) as u8, offset as u8)
    }

    /// The subnet, as `10.213.X.0/22`.
    pub(crate) fn cidr(&self) -> String {
        format!("{}/{PREFIX_LEN}", self.ip(0))
    }

    /// Makes a veth pair `link` / its bridge port, attaches the port to the
    /// bridge and moves `link` into `ns` (or leaves it in the root namespace).
    fn plug(&self, link: &str, ns: Option<&str>) {
        // The bridge side gets a name of the same form ending in `b`, so a
        // leftover in the root namespace is recognised too.
        let port = format!("{link}b");
        must(&["ip", "link", "add", link, "type", "veth", "peer", "name", &port]);
        must(&["ip", "link", "set", &port, "netns", &self.bridge_ns]);
        must(&["ip", "-n", &self.bridge_ns, "link", "set", &port, "master", "br0", "up"]);
        if let Some(ns) = ns {
            must(&["ip", "link", "set", link, "netns", ns]);
        }
    }

    /// Applies an nft script in host `h`.
    fn nft(&self, h: usize, script: &str) {
        let ns = &self.hosts[h].ns;
        run(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(script)).unwrap_or_else(|e| panic!("{e}"));
    }

    fn rule(&self, h: usize, rule: &str) {
        self.nft(h, &format!("add rule {TABLE} input {rule}\n"));
    }

    /// Drops `percent`% of the packets host `h` receives (of `traffic`).
    pub(crate) fn loss(&self, h: usize, percent: u32, traffic: Traffic) {
        self.rule(h, &format!("{} {} drop", traffic.matcher(), chance(percent)));
    }

    /// Drops `percent`% of the packets from host `from` to host `to` (all traffic).
    pub(crate) fn link_loss(&self, from: usize, to: usize, percent: u32) {
        let src = self.hosts[from].addr;
        self.rule(to, &format!("ip saddr {src} {} drop", chance(percent)));
    }

    /// Packets from `from` no longer reach `to`; the other way still works.
    pub(crate) fn partition_one_way(&self, from: &[usize], to: &[usize]) {
        let set = from
            .iter()
            .map(|&h| self.hosts[h].addr.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        each_host(to, |h| self.rule(h, &format!("ip saddr {{ {set} }} drop")));
    }

    /// No packet crosses between `a` and `b`, either way.
    pub(crate) fn partition(&self, a: &[usize], b: &[usize]) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Lifts every fault: flushes our table in every host.
    pub(crate) fn heal(&self) {
        let all: Vec<usize> = (0..self.hosts.len()).collect();
        each_host(&all, |h| self.nft(h, &format!("flush table {TABLE}\n")));
    }

    /// Drops `percent`% of the packets every host receives (of `traffic`).
    pub(crate) fn loss_everywhere(&self, percent: u32, traffic: Traffic) {
        let all: Vec<usize> = (0..self.hosts.len()).collect();
        each_host(&all, |h| self.loss(h, percent, traffic));
    }

    /// The rules of host `h`'s fault table, as `nft` lists them.
    pub(crate) fn rules(&self, h: usize) -> String {
        must(&[
            "ip",
            "netns",
            "exec",
            &self.hosts[h].ns,
            "nft",
            "list",
            "table",
            "inet",
            "rumorfault",
        ])
    }

    /// Names of the namespaces of this network.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| h.ns.clone())
            .chain([self.bridge_ns.clone()])
            .collect()
    }

    /// Removes host `h`'s address (it is unreachable until [`Net::add_address`]).
    pub(crate) fn drop_address(&self, h: usize) {
        let host = &self.hosts[h];
        must(&[
            "ip",
            "-n",
            &host.ns,
            "addr",
            "del",
            &format!("{}/{PREFIX_LEN}", host.addr),
            "dev",
            "eth0",
        ]);
    }

    /// Gives host `h` a new address (offset 512 + 10 + h, or back to
    /// 10 + h); returns it.
    pub(crate) fn add_address(&mut self, h: usize) -> Ipv4Addr {
        let first = self.ip(10 + h as u16);
        let new = if self.hosts[h].addr == first {
            self.ip(MOVED + 10 + h as u16)
        } else {
            first
        };
        let ns = self.hosts[h].ns.clone();
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{new}/{PREFIX_LEN}"),
            "dev",
            "eth0",
        ]);
        self.hosts[h].addr = new;
        new
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The root namespace's veth first (its peer goes with it): deleting
        // a namespace frees its interfaces only later, in the kernel's time.
        let _ = run(&["ip", "link", "del", &self.root_link], None);
        // Processes still inside a namespace keep it alive after `ip netns
        // del`: those are killed first (the harness normally has already).
        for ns in self.hosts.iter().map(|h| h.ns.clone()).chain([self.bridge_ns.clone()]) {
            delete_namespace(&ns);
        }
        if let Some(old) = &self.neighbours {
            for (k, v) in GC_THRESH.iter().zip(old) {
                let _ = run(&["sysctl", "-qw", &format!("{k}={v}")], None);
            }
        }
    }
}

/// Kills what runs in `ns` and deletes it (its veths go with it).
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns], None) {
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-9", pid], None);
        }
    }
    let _ = run(&["ip", "netns", "del", ns], None);
}

/// The pid in one of our names (`<pid>x<n>...` after the prefix).
fn owner(rest: &str) -> Option<u32> {
    let (pid, tail) = rest.split_once('x')?;
    tail.starts_with(|c: char| c.is_ascii_digit())
        .then_some(())
        .and(pid.parse().ok())
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces and root-namespace links of ours whose test process is gone.
fn delete_leftovers() {
    let list = run(&["ip", "netns", "list"], None).unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(pid) = name.strip_prefix(NS_PREFIX).and_then(owner)
            && !alive(pid)
        {
            eprintln!("network: deleting namespace {name} left by process {pid}");
            delete_namespace(name);
        }
    }
    let links = run(&["ip", "-o", "link", "show"], None).unwrap_or_default();
    for l in links.lines() {
        // "7: rn123x0r@if6: <BROADCAST,...": the name, before any '@'.
        let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        if let Some(pid) = name.strip_prefix(LINK_PREFIX).and_then(owner)
            && !alive(pid)
        {
            eprintln!("network: deleting link {name} left by process {pid}");
            let _ = run(&["ip", "link", "del", name], None);
        }
    }
}

/// Serializes the choice of subnets within this process.
static CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Picks X, a multiple of 4, for a 10.213.X.0/22 none of whose four /24s an
/// address or route of the root namespace touches, starting from one derived
/// from `seed`, and gives `link` its offset 1. Another process may pick the
/// same X at the same moment: when another address of that subnet shows up
/// next to ours, ours goes and the next X is tried.
fn claim_subnet(link: &str, seed: u32) -> u8 {
    let _one_at_a_time = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
    let used = || {
        format!(
            "{}\n{}",
            must(&["ip", "-4", "route", "show", "table", "all"]),
            must(&["ip", "-4", "addr", "show"])
        )
    };
    // 10.0.0.0/8, 10.213.0.0/16 and the like would cover ours as well.
    let before = used();
    for wide in ["10.0.0.0/8", "10.213.0.0/16", "default via 10."] {
        assert!(
            !before.contains(wide),
            "this machine routes {wide}: a private subnet of ours could shadow it"
        );
    }
    let prefixes = |x: u8| -> Vec<String> { (x..x + 4).map(|y| format!("{}.{}.{y}.", NET[0], NET[1])).collect() };
    for x in (0..50u32).map(|i| (20 + 4 * (seed.wrapping_add(i) % 50)) as u8) {
        let ours = prefixes(x);
        let taken = used();
        if ours.iter().any(|p| taken.contains(p)) {
            continue;
        }
        let addr = format!("{}1/{PREFIX_LEN}", ours[0]);
        must(&["ip", "addr", "add", &addr, "dev", link]);
        let addrs = must(&["ip", "-4", "-o", "addr", "show"]);
        if addrs.lines().filter(|l| ours.iter().any(|p| l.contains(p))).count() == 1 {
            return x;
        }
        must(&["ip", "addr", "del", &addr, "dev", link]);
    }
    panic!("no free 10.213.X.0/22")
}
