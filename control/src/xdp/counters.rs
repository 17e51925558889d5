//! The program's per-CPU counters, summed over CPUs.

use aya::maps::{Map, MapData, PerCpuArray};
use xdp_quic_ebpf::{Counter, CNT_COUNT};

/// A snapshot of every counter, summed over CPUs, by index (see [`Counter::index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters(pub [u64; CNT_COUNT as usize]);

impl Counters {
    /// Reads the `counters` map.
    pub fn read(map: &Map) -> anyhow::Result<Self> {
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut out = [0u64; CNT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = a.get(&(i as u32), 0)?;
            *slot = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(Self(out))
    }

    /// Value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c.index() as usize]
    }

    /// `(name, value)` of every counter in index order (see [`Counter::name`]).
    pub fn named(&self) -> Vec<(String, u64)> {
        Counter::all().map(|c| (c.name(), self.get(c))).collect()
    }

    /// `self - earlier`, per counter (wrapping).
    pub fn delta(&self, earlier: &Counters) -> Counters {
        let mut d = [0u64; CNT_COUNT as usize];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        Counters(d)
    }
}

/// A handle on a program's `counters` map that outlives the attachment it came from (its own
/// map descriptor): what a metrics exporter holds.
#[derive(Debug)]
pub struct CountersReader {
    map: Map,
}

impl CountersReader {
    /// The counters map pinned by `xdp-quic attach` for `iface`.
    pub fn from_pins(iface: &str) -> anyhow::Result<Self> {
        let path = super::pins::dir(iface).join(xdp_quic_ebpf::maps::COUNTERS);
        let data = MapData::from_pin(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        Ok(Self {
            map: Map::from_map_data(data)?,
        })
    }

    /// The counters map `data` (a descriptor of its own on it).
    pub fn from_map_data(data: MapData) -> anyhow::Result<Self> {
        Ok(Self {
            map: Map::from_map_data(data)?,
        })
    }

    /// The counters map with id `id` (`BPF_MAP_GET_FD_BY_ID`: needs CAP_SYS_ADMIN).
    pub fn from_map_id(id: u32) -> anyhow::Result<Self> {
        Ok(Self {
            map: Map::from_map_data(MapData::from_id(id)?)?,
        })
    }

    /// Reads every counter, summed over CPUs.
    pub fn read(&self) -> anyhow::Result<Counters> {
        Counters::read(&self.map)
    }
}

/// JSON form: `{"packets": N, "v4.redirected": N, ...}`, keys sorted (feature `serde`).
#[cfg(feature = "serde")]
#[derive(Debug, serde::Serialize)]
#[serde(transparent)]
pub struct CountersJson(pub std::collections::BTreeMap<String, u64>);

#[cfg(feature = "serde")]
impl From<&Counters> for CountersJson {
    fn from(c: &Counters) -> Self {
        Self(c.named().into_iter().collect())
    }
}
