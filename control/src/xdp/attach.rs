//! Persistent attachment (`xdp-quic attach` / `detach`: pinned link and maps) and the
//! embedded attachment (for the life of a process).

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::{Map, MapData, XskMap};
use aya::programs::links::FdLink;
use xdp_quic_ebpf::Config;

use super::error::{Occupied, Requester};
use super::load::{self, AttachMode, Mode};
use super::maps::{ProgramMaps, ServiceConfig};
use super::netlink::{self, LinkState, XdpAttached};
use super::owner::{self, Owner};
use super::shield::{self, ShieldConfig, ShieldMaps};
use super::{caps, netns, pins, sys, Counters, XdpError, XskRegistry};

/// What [`attach`] asks for.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Ports and addresses to steer.
    pub service: ServiceConfig,
    /// Mode to attach in.
    pub mode: AttachMode,
    /// Replace an XDP program that xdp-quic did not attach.
    pub force: bool,
    /// The shield: `None` leaves it as it is (off on a new attachment), `Some(None)` turns
    /// it off, `Some(Some(config))` on (what `--shield` and `--no-shield` ask). Set under
    /// the same lock as the rest, and on a new attachment before the program is attached:
    /// the program never runs without the shield asked, and an attach that fails changes
    /// neither the shield nor the service.
    pub shield: Option<Option<ShieldConfig>>,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Attached now.
    Attached {
        /// Mode used.
        mode: Mode,
        /// Program id.
        prog_id: u32,
        /// Id of the foreign program that `--force` removed.
        replaced: Option<u32>,
        /// Whether bpffs had to be mounted.
        mounted_bpffs: bool,
        /// Whether stale pins (of a vanished interface) were removed first.
        removed_stale: bool,
    },
    /// Already attached with this service configuration: ports and addresses unchanged
    /// (the shield as [`AttachOptions::shield`] asked).
    Unchanged {
        /// Mode of the attachment.
        mode: Mode,
        /// Program id.
        prog_id: u32,
        /// The shield's configuration before (`None`: off).
        shield_before: Option<ShieldConfig>,
    },
    /// Already attached: ports/addresses updated in place.
    Updated {
        /// Mode of the attachment.
        mode: Mode,
        /// Program id.
        prog_id: u32,
        /// The service before.
        before: ServiceConfig,
        /// The shield's configuration before (`None`: off).
        shield_before: Option<ShieldConfig>,
    },
}

/// State of the pins of one interface name.
#[derive(Debug)]
pub enum Pinned {
    /// No pin directory.
    None,
    /// Attached and live in this network namespace.
    Live(Box<LiveAttachment>),
    /// Live, but the interface is in another network namespace.
    OtherNamespace,
    /// Pins whose link no longer attaches anything (interface gone) or half-made.
    Stale,
    /// A live link whose maps do not open (pinned by another version of xdp-quic): never
    /// taken for stale, since removing its pins would detach a program in use.
    Incompatible {
        /// The live link's program.
        prog_id: u32,
    },
}

/// A live pinned attachment.
#[derive(Debug)]
pub struct LiveAttachment {
    /// Its maps.
    pub maps: ProgramMaps,
    /// Its config entry.
    pub config: Config,
    /// Mode.
    pub mode: Mode,
    /// Program id.
    pub prog_id: u32,
    /// Link id.
    pub link_id: u32,
}

/// Inspects the pins of `iface` against this network namespace.
pub fn inspect(iface: &str) -> anyhow::Result<Pinned> {
    pins::check_iface_name(iface)?;
    let dir = pins::dir(iface);
    if !dir.exists() {
        return Ok(Pinned::None);
    }
    let link = match sys::obj_get(&dir.join(pins::LINK)) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pinned::Stale),
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context(format!("opening {}", dir.join(pins::LINK).display())))
        }
    };
    let info = sys::xdp_link_info(link.as_fd()).context("reading the pinned link")?;
    if info.ifindex == 0 {
        return Ok(Pinned::Stale);
    }
    let Ok(maps) = ProgramMaps::open_pinned(&dir) else {
        // Without the maps (and the namespace they record), the link's interface tells:
        // unless this namespace has it, by this name, it is another namespace's, which a
        // detach here must not touch.
        let here = netlink::link_by_name(iface)
            .ok()
            .flatten()
            .is_some_and(|l| l.ifindex == info.ifindex);
        if !here {
            return Ok(Pinned::OtherNamespace);
        }
        return Ok(Pinned::Incompatible {
            prog_id: info.prog_id,
        });
    };
    let config = maps.read_config()?;
    if config.netns_ino != netns::current_ino()? {
        return Ok(Pinned::OtherNamespace);
    }
    let mode = Mode::from_config(config.mode).unwrap_or(Mode::Skb);
    Ok(Pinned::Live(Box::new(LiveAttachment {
        maps,
        config,
        mode,
        prog_id: info.prog_id,
        link_id: info.id,
    })))
}

fn resolve(iface: &str) -> anyhow::Result<LinkState> {
    netlink::link_by_name(iface)
        .with_context(|| format!("looking up interface {iface}"))?
        .ok_or_else(|| XdpError::UnknownInterface(iface.to_string()).into())
}

/// Attaches the steering program to `iface` persistently: the link and the maps are
/// pinned under `/sys/fs/bpf/xdp-quic/<iface>/` (bpffs is mounted if needed) and stay
/// after this process exits.
///
/// If xdp-quic is already attached there: same service → [`AttachOutcome::Unchanged`];
/// other ports/addresses → updated in place ([`AttachOutcome::Updated`]), except that an
/// update that steers less than before (a port or address dropped) while AF_XDP sockets of
/// a running server are registered is refused unless `force`: the program cannot tell which
/// ports that server serves, so it refuses even if the port dropped is not that server's.
/// Another mode asked explicitly → [`XdpError::ModeMismatch`]. Another program on the
/// interface (or xdp-quic's, attached by a running process) → [`XdpError::ProgramPresent`]
/// unless `force`. In a private mount namespace without bpffs (`ip netns exec`) →
/// [`XdpError::PrivateMountNamespace`]. On error nothing is left changed, with one
/// exception: with `force`, the program that was there (and the live attachment of another
/// interface whose pins hold this name) is removed after ours loaded but before it
/// attaches, so an attach that fails then (the mode refused, say) leaves the interface
/// with none; the error says so.
pub fn attach(iface: &str, opts: &AttachOptions) -> anyhow::Result<AttachOutcome> {
    opts.service.validate()?;
    if let Some(Some(c)) = &opts.shield {
        c.validate()?;
    }
    // CAP_PERFMON besides only where a program is loaded (below): an update of a live
    // attachment's ports or shield loads none.
    let what = format!("attaching XDP to {iface}");
    caps::require_xdp_admin(&what)?;
    pins::require_host_bpffs("attach")?;
    // An unknown interface is refused before anything changes.
    resolve(iface)?;
    if !pins::bpffs_mounted() {
        // No pins without it: this attach loads the program.
        caps::require_xdp_load(&what)?;
    }
    let mounted_bpffs = pins::ensure_bpffs()?;
    // From the first look at the pins to the last change: no other attach or detach.
    let _lock =
        pins::PinLock::take().with_context(|| format!("locking {}", pins::pin_root().display()))?;
    let link_state = resolve(iface)?;
    // Asked where a program is loaded, before anything is removed: without it the link
    // that holds the program on the interface cannot be found, and detaching by netlink
    // cannot take a program a link holds.
    let may_replace = || -> anyhow::Result<()> {
        if opts.force && link_state.xdp != XdpAttached::None && !caps::may_list_programs() {
            anyhow::bail!(
                "not permitted: replacing the XDP program on {iface} (--force) needs \
                 CAP_SYS_ADMIN (finding and detaching the BPF link that may hold it takes \
                 it); run it as root"
            );
        }
        Ok(())
    };
    let mut removed_stale = false;
    // With --force, the live attachment of another interface whose pins hold this name:
    // (its interface index, its program id).
    let mut displaced = None;
    match inspect(iface)? {
        Pinned::Live(mut live) => {
            if link_state.ifindex != live.config.ifindex || link_state.xdp_prog_id != live.prog_id {
                // The pins hold a live attachment of another interface (this one renamed,
                // or recreated while the old one lives on under another name): removing
                // them detaches a program that may be serving. Only with --force.
                if !opts.force {
                    anyhow::bail!(
                        "the pins of {iface} hold xdp-quic's live attachment of interface \
                         index {} (program {}), not of the {iface} there is now (renamed, or \
                         recreated?): detach it first (`xdp-quic detach {iface}`), or attach \
                         with --force to replace it",
                        live.config.ifindex,
                        live.prog_id
                    );
                }
                caps::require_xdp_load(&what)?;
                may_replace()?;
                // Removed once ours is loaded (below): a load that fails leaves it serving.
                displaced = Some((live.config.ifindex, live.prog_id));
            } else {
                if !live.mode.satisfies(opts.mode) {
                    return Err(XdpError::ModeMismatch {
                        iface: iface.into(),
                        current: live.mode.name(),
                        wanted: if opts.mode == AttachMode::Native {
                            "native"
                        } else {
                            "skb"
                        },
                    }
                    .into());
                }
                let before = live.maps.read_service()?;
                if before != opts.service && !opts.force && narrows(&before, &opts.service) {
                    // The program stays the same, so a server on these queues would not
                    // notice: its datagrams would go to the kernel, and be dropped there.
                    let serving = live.maps.registered_queues(u32::MAX)?;
                    if !serving.is_empty() {
                        anyhow::bail!(
                            "{iface}: AF_XDP sockets of a running server are registered on queue(s) \
                             {serving:?}, and this update steers less than before (ports {:?} \
                             -> {:?}, addresses {} -> {}): the server's traffic could stop \
                             without its knowing. Stop the server first, or run with --force",
                            before.ports,
                            opts.service.ports,
                            if before.addrs.is_empty() { "any".to_string() } else { format!("{:?}", before.addrs) },
                            if opts.service.addrs.is_empty() { "any".to_string() } else { format!("{:?}", opts.service.addrs) },
                        );
                    }
                }
                // Every refusal is behind: the shield, then the service, and the shield put
                // back if the service cannot be written.
                let (entry, shield_before) = match &opts.shield {
                    Some(want) => {
                        let (entry, was) = shield::set_on_maps(&mut live.maps, want.as_ref())?;
                        (Some(entry), was)
                    }
                    None => (None, shield::config_on_maps(&live.maps)?),
                };
                if before == opts.service {
                    return Ok(AttachOutcome::Unchanged {
                        mode: live.mode,
                        prog_id: live.prog_id,
                        shield_before,
                    });
                }
                if let Err(e) = live.maps.write_service(&opts.service) {
                    if let Some(entry) = entry {
                        if let Err(r) = shield::restore_entry(&mut live.maps, &entry) {
                            return Err(e.context(format!(
                                "the shield was changed and could not be put back ({r:#})"
                            )));
                        }
                    }
                    return Err(e);
                }
                return Ok(AttachOutcome::Updated {
                    mode: live.mode,
                    prog_id: live.prog_id,
                    before,
                    shield_before,
                });
            }
        }
        Pinned::OtherNamespace => {
            return Err(XdpError::OtherNamespace {
                iface: iface.into(),
                path: pins::dir(iface),
            }
            .into());
        }
        Pinned::Stale => {
            caps::require_xdp_load(&what)?;
            may_replace()?;
            pins::remove_dir(iface).context("removing stale pins")?;
            removed_stale = true;
        }
        Pinned::Incompatible { prog_id } => anyhow::bail!(incompatible(iface, prog_id)),
        Pinned::None => {
            caps::require_xdp_load(&what)?;
            may_replace()?;
        }
    }
    // Loaded (and verified) before another program is removed: a load that fails leaves
    // the interface as it was.
    let config = Config {
        ifindex: link_state.ifindex,
        netns_ino: netns::current_ino()?,
        ..Config::default()
    };
    let mut loaded = load::load(&opts.service, config)?;
    if let Some(want) = &opts.shield {
        // Before the program is attached: it never runs without the shield asked.
        shield::set_on_maps(&mut loaded.maps, want.as_ref())?;
    }
    if let Some((index, prog)) = displaced {
        pins::remove_dir(iface).with_context(|| {
            format!("removing the pins of the attachment of interface index {index}")
        })?;
        removed_stale = true;
        tracing::debug!("removed the pins of program {prog} on interface index {index}");
    }
    // From here on a failure leaves what --force removed removed: the error says so.
    let displaced_note = |e: anyhow::Error| match displaced {
        Some((index, prog)) => e.context(format!(
            "the attachment whose pins were named {iface} (program {prog} on interface index \
             {index}) was removed (--force) before this attach failed"
        )),
        None => e,
    };
    let replaced =
        clear_foreign(iface, &link_state, opts.force, Requester::Attach).map_err(displaced_note)?;
    let replaced_note = |e: anyhow::Error| match replaced {
        Some(id) => e.context(format!(
            "the program that was on {iface} (id {id}) was removed (--force) before this \
             attach failed: {iface} has no XDP program now"
        )),
        None => e,
    };
    let mut attach_and_pin = || -> anyhow::Result<Mode> {
        let (link, mode) = load::attach_link(&mut loaded, iface, link_state.ifindex, opts.mode)?;
        let mut config = loaded.maps.read_config()?;
        config.mode = mode.to_config();
        loaded.maps.write_config(&config)?;
        let dir = pins::create_dir(iface)
            .with_context(|| format!("creating {}", pins::dir(iface).display()))?;
        let guard = pins::DirGuard::new(iface);
        loaded.maps.pin(&dir)?;
        link.pin(dir.join(pins::LINK))
            .with_context(|| format!("pinning the link in {}", dir.display()))?;
        guard.commit();
        Ok(mode)
    };
    let mode = attach_and_pin()
        .map_err(displaced_note)
        .map_err(replaced_note)?;
    Ok(AttachOutcome::Attached {
        mode,
        prog_id: loaded.prog_id,
        replaced,
        mounted_bpffs,
        removed_stale,
    })
}

/// A descriptor of its own on `map`: a `dup` (opening the map again by id, as
/// `BPF_MAP_GET_FD_BY_ID`, needs CAP_SYS_ADMIN, which a server attaching with CAP_BPF and
/// CAP_NET_ADMIN lacks).
fn dup_map(map: &MapData) -> anyhow::Result<MapData> {
    let fd = map.fd().as_fd().try_clone_to_owned()?;
    Ok(MapData::from_fd(fd)?)
}

/// Removes the XDP program on the interface when `force`; refuses otherwise, saying whose
/// it is (another tool's, or xdp-quic's: pinned, or attached by a running process) and what
/// `requester` can do about it. Returns the id of the program removed.
fn clear_foreign(
    iface: &str,
    st: &LinkState,
    force: bool,
    requester: Requester,
) -> anyhow::Result<Option<u32>> {
    if st.xdp == XdpAttached::None {
        return Ok(None);
    }
    if !force {
        let mut st = st.clone();
        // A program can go while it is looked at: its last holder closed it (a process that
        // ended, or a child another thread of this process forked while holding the link,
        // which kept it until its exec). Finding its owner takes a scan of every process,
        // so the interface is looked at again after it: refused only if the same program
        // is still there (three looks at most, for programs that come and go).
        for _ in 0..3 {
            // Only the wording depends on whose it is: an error finding out means "another's".
            let owner = owner::identify(st.xdp_prog_id, st.ifindex)
                .map(|(o, _)| o)
                .unwrap_or(Owner::Other);
            let now = resolve(iface)?;
            if now.xdp == XdpAttached::None {
                return Ok(None);
            }
            if now.xdp_prog_id != st.xdp_prog_id {
                st = now;
                continue;
            }
            return Err(XdpError::ProgramPresent(Box::new(Occupied {
                iface: iface.into(),
                prog_id: st.xdp_prog_id,
                mode: st.xdp.name(),
                owner,
                requester,
            }))
            .into());
        }
        return Err(XdpError::ProgramPresent(Box::new(Occupied {
            iface: iface.into(),
            prog_id: st.xdp_prog_id,
            mode: st.xdp.name(),
            owner: Owner::Other,
            requester,
        }))
        .into());
    }
    // A BPF link holds it: detach the link (its owner keeps a defunct link).
    for info in aya::programs::loaded_links() {
        let Ok(info) = info else { continue };
        if info.link_type().ok() != Some(aya::programs::links::LinkType::Xdp)
            || info.program_id() != st.xdp_prog_id
        {
            continue;
        }
        let fd = sys::link_fd_by_id(info.id()).context("opening the other program's link")?;
        if sys::xdp_link_info(fd.as_fd())?.ifindex == st.ifindex {
            sys::link_detach(fd.as_fd()).context("detaching the other program's link")?;
            return Ok(Some(st.xdp_prog_id));
        }
    }
    // Attached through netlink.
    netlink::detach_netlink_xdp(st.ifindex, st.xdp.flags())
        .with_context(|| format!("removing the other XDP program from {iface}"))?;
    Ok(Some(st.xdp_prog_id))
}

/// What [`detach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachOutcome {
    /// The program was attached and is now gone with its pins.
    Detached {
        /// Program id it had.
        prog_id: u32,
    },
    /// Only stale pins were left (interface gone); they are removed.
    RemovedStale,
}

/// Detaches xdp-quic from `iface` and removes its pins. Errors with
/// [`XdpError::NotAttached`] when there is nothing to detach.
pub fn detach(iface: &str) -> anyhow::Result<DetachOutcome> {
    caps::require_xdp_admin(&format!("detaching XDP from {iface}"))?;
    pins::require_host_bpffs("detach")?;
    if !pins::bpffs_mounted() {
        return Err(not_pinned(iface));
    }
    let Some(_lock) = pins::PinLock::existing()
        .with_context(|| format!("locking {}", pins::pin_root().display()))?
    else {
        return Err(not_pinned(iface));
    };
    match inspect(iface)? {
        Pinned::None => Err(not_pinned(iface)),
        Pinned::OtherNamespace => Err(XdpError::OtherNamespace {
            iface: iface.into(),
            path: pins::dir(iface),
        }
        .into()),
        Pinned::Stale => {
            pins::remove_dir(iface).context("removing stale pins")?;
            Ok(DetachOutcome::RemovedStale)
        }
        Pinned::Incompatible { prog_id } => {
            let link = sys::obj_get(&pins::dir(iface).join(pins::LINK))?;
            sys::link_detach(link.as_fd()).context("detaching the link")?;
            pins::remove_dir(iface).context("removing pins")?;
            Ok(DetachOutcome::Detached { prog_id })
        }
        Pinned::Live(live) => {
            let link = sys::obj_get(&pins::dir(iface).join(pins::LINK))?;
            let prog_id = live.prog_id;
            drop(live);
            // Detach explicitly: a daemon may hold the link fd open, and the attachment
            // must end now, not when the last holder exits.
            sys::link_detach(link.as_fd()).context("detaching the link")?;
            pins::remove_dir(iface).context("removing pins")?;
            Ok(DetachOutcome::Detached { prog_id })
        }
    }
}

/// What to do about a live link whose maps do not open.
pub(crate) fn incompatible(iface: &str, prog_id: u32) -> String {
    format!(
        "xdp-quic's link pinned for {iface} is live (program {prog_id}) but its maps do not \
         open: pinned by another version of xdp-quic? Run `xdp-quic detach {iface}`, then \
         attach again"
    )
}

/// The error of a detach with no pins: [`XdpError::AttachedByProcess`] when a running
/// process attached xdp-quic's program to `iface` for itself, else [`XdpError::NotAttached`].
fn not_pinned(iface: &str) -> anyhow::Error {
    let by_process = netlink::link_by_name(iface)
        .ok()
        .flatten()
        .and_then(|l| owner::identify(l.xdp_prog_id, l.ifindex).ok())
        .and_then(|(o, _)| match o {
            Owner::Process { holders } => Some(holders),
            _ => None,
        });
    match by_process {
        Some(holders) => XdpError::AttachedByProcess {
            iface: iface.into(),
            holders: Owner::describe_holders(&holders),
        }
        .into(),
        None => XdpError::NotAttached {
            iface: iface.into(),
            path: pins::dir(iface),
        }
        .into(),
    }
}

/// An attachment that lasts as long as this value: dropping it (or the process
/// exiting) detaches the program. No pins are made.
pub struct EmbeddedAttachment {
    // Field order: the link goes first, then the maps and the object.
    _link: FdLink,
    maps: ProgramMaps,
    _ebpf: aya::Ebpf,
    mode: Mode,
    prog_id: u32,
    ifindex: u32,
}

impl std::fmt::Debug for EmbeddedAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedAttachment")
            .field("mode", &self.mode)
            .field("prog_id", &self.prog_id)
            .field("ifindex", &self.ifindex)
            .finish()
    }
}

impl EmbeddedAttachment {
    /// Mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Program id.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }
    /// Interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    /// A handle on the XSKMAP to register AF_XDP sockets (a second fd on the same map).
    pub fn xsks(&self) -> anyhow::Result<XskRegistry> {
        let Map::XskMap(data) = &self.maps.xsks else {
            anyhow::bail!("xsks is not an XSKMAP");
        };
        let dup = dup_map(data)?;
        let Map::Array(odata) = &self.maps.xsk_owners else {
            anyhow::bail!("xsk_owners is not an ARRAY");
        };
        let odup = dup_map(odata)?;
        Ok(XskRegistry::from_maps(
            XskMap::try_from(Map::from_map_data(dup)?)?,
            aya::maps::Array::try_from(Map::from_map_data(odup)?)?,
        ))
    }
    /// Current counters.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        Counters::read(&self.maps.counters)
    }
    /// A reader of the counters that stays valid after this attachment is gone.
    pub fn counters_reader(&self) -> anyhow::Result<super::CountersReader> {
        let aya::maps::Map::PerCpuArray(data) = &self.maps.counters else {
            anyhow::bail!("counters is not a per-CPU array");
        };
        super::CountersReader::from_map_data(dup_map(data)?)
    }
    /// Changes the steered ports/addresses.
    pub fn set_service(&mut self, service: &ServiceConfig) -> anyhow::Result<()> {
        self.maps.write_service(service)
    }
    /// The shield's maps (descriptors of their own, valid after this attachment is gone).
    pub fn shield(&self) -> anyhow::Result<ShieldMaps> {
        self.maps.shield_maps()
    }
}

/// Attaches for the life of the returned value (embedded mode). Refuses when xdp-quic's
/// pins or another program already occupy the interface (no `force` here), with an
/// [`XdpError::ProgramPresent`] worded for a server ([`Requester::Server`]).
pub fn attach_embedded(
    iface: &str,
    service: &ServiceConfig,
    mode: AttachMode,
) -> anyhow::Result<EmbeddedAttachment> {
    service.validate()?;
    caps::require_xdp_load(&format!("attaching XDP to {iface}"))?;
    let st = resolve(iface)?;
    let port = service.ports.first().copied().unwrap_or_default();
    clear_foreign(iface, &st, false, Requester::Server { port })?;
    let config = Config {
        ifindex: st.ifindex,
        netns_ino: netns::current_ino()?,
        ..Config::default()
    };
    let mut loaded = load::load(service, config)?;
    let (link, mode) = load::attach_link(&mut loaded, iface, st.ifindex, mode)?;
    let mut config = loaded.maps.read_config()?;
    config.mode = mode.to_config();
    loaded.maps.write_config(&config)?;
    Ok(EmbeddedAttachment {
        _link: link,
        maps: loaded.maps,
        _ebpf: loaded.ebpf,
        mode,
        prog_id: loaded.prog_id,
        ifindex: st.ifindex,
    })
}

/// Whether `after` steers less than `before`: a port dropped, or addresses narrowed (from
/// any, or one dropped).
fn narrows(before: &ServiceConfig, after: &ServiceConfig) -> bool {
    let ports = !before.ports.is_subset(&after.ports);
    let addrs = !after.addrs.is_empty()
        && (before.addrs.is_empty() || !before.addrs.is_subset(&after.addrs));
    ports || addrs
}
