//! Running the steering program on crafted packets without an interface
//! (`BPF_PROG_TEST_RUN`), for tests and for checking a kernel accepts the program.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::programs::Xdp;

use super::load::{self, Loaded};
use super::maps::ServiceConfig;
use super::{sys, Counters, ShieldMaps};

pub use super::sys::TestRunOutput;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// A loaded, unattached instance of the steering program.
pub struct TestProgram {
    loaded: Loaded,
}

impl TestProgram {
    /// Loads the embedded program (the verifier checks it) configured with `service`.
    pub fn load(service: &ServiceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            loaded: load::load(service, xdp_quic_ebpf::Config::default())?,
        })
    }

    /// Runs the program once on `packet`, as received on rx queue 0.
    pub fn run(&mut self, packet: &[u8]) -> anyhow::Result<TestRunOutput> {
        let prog: &Xdp = self
            .loaded
            .ebpf
            .program(xdp_quic_ebpf::PROG_NAME)
            .context("program missing")?
            .try_into()?;
        let fd = prog.fd()?;
        sys::prog_test_run_xdp(fd.as_fd(), packet, 0, 0).context("BPF_PROG_TEST_RUN")
    }

    /// Counters so far.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        Counters::read(&self.loaded.maps.counters)
    }

    /// Replaces the steered ports/addresses.
    pub fn set_service(&mut self, service: &ServiceConfig) -> anyhow::Result<()> {
        self.loaded.maps.write_service(service)
    }

    /// The shield's maps: configuration, CID layout and pressure flags (rx queue 0 is the
    /// one [`TestProgram::run`] uses).
    pub fn shield(&self) -> anyhow::Result<ShieldMaps> {
        self.loaded.maps.shield_maps()
    }

    /// Writes the shield's map entry as given (no validation: for tests of the program).
    pub fn set_shield_entry(&mut self, s: &xdp_quic_ebpf::Shield) -> anyhow::Result<()> {
        self.loaded.maps.write_shield(s)
    }

    /// The token buckets the program made so far.
    pub fn buckets(
        &self,
    ) -> anyhow::Result<Vec<(xdp_quic_ebpf::BucketKey, xdp_quic_ebpf::Bucket)>> {
        let m: aya::maps::HashMap<
            &aya::maps::MapData,
            xdp_quic_ebpf::BucketKey,
            xdp_quic_ebpf::Bucket,
        > = aya::maps::HashMap::try_from(&self.loaded.maps.buckets)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    /// Writes a token bucket as given (for tests of the program's refill).
    pub fn set_bucket(
        &mut self,
        key: &xdp_quic_ebpf::BucketKey,
        bucket: &xdp_quic_ebpf::Bucket,
    ) -> anyhow::Result<()> {
        let mut m: aya::maps::HashMap<
            &mut aya::maps::MapData,
            xdp_quic_ebpf::BucketKey,
            xdp_quic_ebpf::Bucket,
        > = aya::maps::HashMap::try_from(&mut self.loaded.maps.buckets)?;
        m.insert(key, bucket, 0)?;
        Ok(())
    }

    /// Removes every token bucket.
    pub fn clear_buckets(&mut self) -> anyhow::Result<()> {
        let mut m: aya::maps::HashMap<
            &mut aya::maps::MapData,
            xdp_quic_ebpf::BucketKey,
            xdp_quic_ebpf::Bucket,
        > = aya::maps::HashMap::try_from(&mut self.loaded.maps.buckets)?;
        let keys: Vec<_> = m.keys().collect::<Result<_, _>>()?;
        for k in keys {
            m.remove(&k)?;
        }
        Ok(())
    }
}
