//! Loading the embedded object and attaching its program with a BPF link.

use std::io;

use anyhow::Context as _;
use aya::programs::{links::FdLink, ProgramError, Xdp, XdpMode};
use aya::Ebpf;
use xdp_quic_ebpf::{Config, MODE_NATIVE, MODE_SKB, PROG_NAME};

use super::maps::{ProgramMaps, ServiceConfig};
use super::XdpError;

/// The mode asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native if the driver does it, else skb.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Skb,
}

/// The mode a program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP.
    Skb,
}

impl Mode {
    /// `native` or `skb`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
    /// The `xq_config.mode` value.
    pub fn to_config(self) -> u32 {
        match self {
            Self::Native => MODE_NATIVE,
            Self::Skb => MODE_SKB,
        }
    }
    /// From the `xq_config.mode` value.
    pub fn from_config(v: u32) -> Option<Self> {
        match v {
            MODE_NATIVE => Some(Self::Native),
            MODE_SKB => Some(Self::Skb),
            _ => None,
        }
    }
    /// Whether `asked` allows this mode.
    pub fn satisfies(self, asked: AttachMode) -> bool {
        matches!(
            (asked, self),
            (AttachMode::Auto, _)
                | (AttachMode::Native, Mode::Native)
                | (AttachMode::Skb, Mode::Skb)
        )
    }
}

/// A loaded (not yet attached) program with its maps configured.
pub struct Loaded {
    /// The aya object; dropping it detaches links it still owns and closes the program.
    pub ebpf: Ebpf,
    /// The maps, taken out of `ebpf`.
    pub maps: ProgramMaps,
    /// Kernel id of the program.
    pub prog_id: u32,
}

fn is_perm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn io_error_of(e: &ProgramError) -> Option<&io::Error> {
    match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        _ => None,
    }
}

/// Loads the embedded program and writes `service` and `config` into its maps (with the id
/// of its `xsk_owners` map in `config.reserved`).
pub fn load(service: &ServiceConfig, config: Config) -> anyhow::Result<Loaded> {
    service.validate()?;
    let mut ebpf = Ebpf::load(xdp_quic_ebpf::object()).map_err(|e| {
        let perm = matches!(&e, aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) if is_perm(io_error));
        if perm {
            anyhow::Error::from(XdpError::NotPermitted { what: "creating BPF maps".into() })
        } else {
            anyhow::Error::from(e).context("loading the embedded XDP object")
        }
    })?;
    let prog = program(&mut ebpf)?;
    if let Err(e) = prog.load() {
        if io_error_of(&e).is_some_and(is_perm) {
            return Err(XdpError::NotPermitted {
                what: "loading the XDP program".into(),
            }
            .into());
        }
        return Err(anyhow::Error::from(e).context("the kernel refused the XDP program"));
    }
    let prog_id = prog.info().context("reading the program's id")?.id();
    let mut maps = ProgramMaps::take(&mut ebpf)?;
    // The program does not use xsk_owners, so the kernel does not list it among the
    // program's maps: the config entry records its id, for finding it from the program.
    let config = Config {
        reserved: maps.xsk_owners_id()?,
        ..config
    };
    maps.write_config(&config)?;
    maps.write_service(service)?;
    Ok(Loaded {
        ebpf,
        maps,
        prog_id,
    })
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    let p = ebpf
        .program_mut(PROG_NAME)
        .with_context(|| format!("program {PROG_NAME} missing from the object"))?;
    Ok(p.try_into()?)
}

/// Attaches the loaded program to `ifindex` with a BPF link in the asked mode (auto:
/// native, else skb) and returns the link, now owned by the caller, and the mode used.
pub fn attach_link(
    loaded: &mut Loaded,
    iface: &str,
    ifindex: u32,
    asked: AttachMode,
) -> anyhow::Result<(FdLink, Mode)> {
    let prog = program(&mut loaded.ebpf)?;
    let order: &[Mode] = match asked {
        AttachMode::Auto => &[Mode::Native, Mode::Skb],
        AttachMode::Native => &[Mode::Native],
        AttachMode::Skb => &[Mode::Skb],
    };
    let mut last = None;
    for &mode in order {
        let xm = match mode {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        };
        match prog.attach_to_if_index(ifindex, xm) {
            Ok(id) => {
                let link = prog.take_link(id)?;
                let fd_link = FdLink::try_from(link).map_err(|_| {
                    anyhow::anyhow!("the kernel attached through netlink, not a BPF link: xdp-quic needs Linux 5.9 or later")
                })?;
                return Ok((fd_link, mode));
            }
            Err(e) => {
                let errno = io_error_of(&e).and_then(|e| e.raw_os_error());
                if io_error_of(&e).is_some_and(is_perm) {
                    return Err(XdpError::NotPermitted {
                        what: format!("attaching XDP to {iface}"),
                    }
                    .into());
                }
                if matches!(errno, Some(libc::EBUSY) | Some(libc::EEXIST)) {
                    return Err(anyhow::Error::from(e).context(format!(
                        "another XDP program got attached to {iface} meanwhile; see `ip link show dev {iface}`"
                    )));
                }
                last = Some((mode, e));
            }
        }
    }
    let (mode, e) = last.expect("at least one mode tried");
    if asked == AttachMode::Native {
        let cause = io_error_of(&e)
            .map(|io| io.to_string())
            .unwrap_or_else(|| e.to_string());
        return Err(XdpError::NativeRefused {
            iface: iface.into(),
            cause,
        }
        .into());
    }
    Err(anyhow::Error::from(e).context(format!("attaching XDP to {iface} in {} mode", mode.name())))
}
