//! Finding components by id.
//!
//! Built-in crates submit a const entry with [`register_codec!`](crate::register_codec) (and its
//! calibrator and allocator twins); [`Registry::from_static`] gathers them. The host may add more
//! components from other sources (dynamic libraries) with [`Registry::add_codec`] and friends.
//! A duplicate id is an error naming both sources; an unknown id's error lists the ids that exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{API_VERSION, Allocator, Calibrator, Codec, Error, ErrorKind, Result, StatKind};

/// A statically registered codec.
pub struct CodecEntry {
    /// The codec's id; must equal what the constructed codec's `id()` returns.
    pub id: &'static str,
    /// [`API_VERSION`] of the `tenpak-api` the implementation was built against.
    pub api_version: u32,
    /// Where it comes from (crate name and version), for error messages.
    pub source: &'static str,
    /// Constructor.
    pub make: fn() -> Box<dyn Codec>,
}

/// A statically registered calibrator. A new instance is made for every run, since calibrators
/// accumulate state.
pub struct CalibratorEntry {
    /// The calibrator's id.
    pub id: &'static str,
    /// [`API_VERSION`] it was built against.
    pub api_version: u32,
    /// Where it comes from.
    pub source: &'static str,
    /// Constructor.
    pub make: fn() -> Box<dyn Calibrator>,
}

/// A statically registered allocator.
pub struct AllocatorEntry {
    /// The allocator's id.
    pub id: &'static str,
    /// [`API_VERSION`] it was built against.
    pub api_version: u32,
    /// Where it comes from.
    pub source: &'static str,
    /// Constructor.
    pub make: fn() -> Box<dyn Allocator>,
}

inventory::collect!(CodecEntry);
inventory::collect!(CalibratorEntry);
inventory::collect!(AllocatorEntry);

/// Register a codec type (which must implement `Default` and [`Codec`]) under `id`.
///
/// ```ignore
/// tenpak_api::register_codec!("int4_rtn", Int4Rtn);
/// ```
#[macro_export]
macro_rules! register_codec {
    ($id:expr, $ty:ty) => {
        $crate::__inventory::submit! {
            $crate::registry::CodecEntry {
                id: $id,
                api_version: $crate::API_VERSION,
                source: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
                make: || ::std::boxed::Box::new(<$ty as ::std::default::Default>::default()),
            }
        }
    };
}

/// Register a calibrator type (`Default` + [`Calibrator`]) under `id`.
#[macro_export]
macro_rules! register_calibrator {
    ($id:expr, $ty:ty) => {
        $crate::__inventory::submit! {
            $crate::registry::CalibratorEntry {
                id: $id,
                api_version: $crate::API_VERSION,
                source: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
                make: || ::std::boxed::Box::new(<$ty as ::std::default::Default>::default()),
            }
        }
    };
}

/// Register an allocator type (`Default` + [`Allocator`]) under `id`.
#[macro_export]
macro_rules! register_allocator {
    ($id:expr, $ty:ty) => {
        $crate::__inventory::submit! {
            $crate::registry::AllocatorEntry {
                id: $id,
                api_version: $crate::API_VERSION,
                source: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
                make: || ::std::boxed::Box::new(<$ty as ::std::default::Default>::default()),
            }
        }
    };
}

/// How to make a calibrator: calibrators hold per-run state, so the registry keeps constructors.
pub type CalibratorFactory = Arc<dyn Fn() -> Box<dyn Calibrator> + Send + Sync>;

struct Slot<T> {
    value: T,
    source: String,
}

/// Every component the host can use, by id.
#[derive(Default)]
pub struct Registry {
    codecs: BTreeMap<String, Slot<Arc<dyn Codec>>>,
    calibrators: BTreeMap<String, Slot<CalibratorFactory>>,
    allocators: BTreeMap<String, Slot<Arc<dyn Allocator>>>,
}

fn check_new<T>(map: &BTreeMap<String, Slot<T>>, kind: &str, id: &str, source: &str) -> Result<()> {
    if let Some(existing) = map.get(id) {
        return Err(Error::new(
            ErrorKind::Registry,
            format!("{kind} id `{id}` registered twice: by {} and by {source}", existing.source),
        ));
    }
    Ok(())
}

fn check_version(kind: &str, id: &str, source: &str, version: u32) -> Result<()> {
    if version != API_VERSION {
        return Err(Error::new(
            ErrorKind::Registry,
            format!(
                "{kind} `{id}` from {source} was built against tenpak-api version {version}, \
                 this host speaks version {API_VERSION}"
            ),
        ));
    }
    Ok(())
}

fn unknown<T>(map: &BTreeMap<String, Slot<T>>, kind: &str, id: &str) -> Error {
    let known: Vec<&str> = map.keys().map(String::as_str).collect();
    Error::new(
        ErrorKind::Registry,
        format!("unknown {kind} `{id}` (registered: {})", if known.is_empty() { "none".into() } else { known.join(", ") }),
    )
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every statically registered component linked into this binary.
    pub fn from_static() -> Result<Self> {
        let mut registry = Self::new();
        for entry in inventory::iter::<CodecEntry> {
            check_version("codec", entry.id, entry.source, entry.api_version)?;
            let codec: Arc<dyn Codec> = Arc::from((entry.make)());
            if codec.id() != entry.id {
                return Err(Error::new(
                    ErrorKind::Registry,
                    format!(
                        "codec registered as `{}` by {} reports id `{}`",
                        entry.id,
                        entry.source,
                        codec.id()
                    ),
                ));
            }
            registry.add_codec(codec, entry.source)?;
        }
        for entry in inventory::iter::<CalibratorEntry> {
            check_version("calibrator", entry.id, entry.source, entry.api_version)?;
            let make = entry.make;
            registry.add_calibrator(entry.id, Arc::new(make), entry.source)?;
        }
        for entry in inventory::iter::<AllocatorEntry> {
            check_version("allocator", entry.id, entry.source, entry.api_version)?;
            registry.add_allocator(Arc::from((entry.make)()), entry.source)?;
        }
        Ok(registry)
    }

    /// Add a codec from `source`; fails if its id is taken.
    pub fn add_codec(&mut self, codec: Arc<dyn Codec>, source: &str) -> Result<()> {
        let id = codec.id().to_owned();
        check_new(&self.codecs, "codec", &id, source)?;
        self.codecs.insert(id, Slot { value: codec, source: source.to_owned() });
        Ok(())
    }

    /// Add a calibrator constructor from `source`; fails if `id` is taken.
    pub fn add_calibrator(&mut self, id: &str, make: CalibratorFactory, source: &str) -> Result<()> {
        check_new(&self.calibrators, "calibrator", id, source)?;
        self.calibrators.insert(id.to_owned(), Slot { value: make, source: source.to_owned() });
        Ok(())
    }

    /// Add an allocator from `source`; fails if its id is taken.
    pub fn add_allocator(&mut self, allocator: Arc<dyn Allocator>, source: &str) -> Result<()> {
        let id = allocator.id().to_owned();
        check_new(&self.allocators, "allocator", &id, source)?;
        self.allocators.insert(id, Slot { value: allocator, source: source.to_owned() });
        Ok(())
    }

    /// The codec `id`, or an error listing the registered ones.
    pub fn codec(&self, id: &str) -> Result<Arc<dyn Codec>> {
        self.codecs.get(id).map(|s| s.value.clone()).ok_or_else(|| unknown(&self.codecs, "codec", id))
    }

    /// Where codec `id` came from (crate name and version, or a library path).
    pub fn codec_source(&self, id: &str) -> Option<&str> {
        self.codecs.get(id).map(|s| s.source.as_str())
    }

    /// Where calibrator `id` came from.
    pub fn calibrator_source(&self, id: &str) -> Option<&str> {
        self.calibrators.get(id).map(|s| s.source.as_str())
    }

    /// Where allocator `id` came from.
    pub fn allocator_source(&self, id: &str) -> Option<&str> {
        self.allocators.get(id).map(|s| s.source.as_str())
    }

    /// A fresh instance of calibrator `id`, or an error listing the registered ones.
    pub fn calibrator(&self, id: &str) -> Result<Box<dyn Calibrator>> {
        self.calibrators
            .get(id)
            .map(|s| (s.value)())
            .ok_or_else(|| unknown(&self.calibrators, "calibrator", id))
    }

    /// A new instance of the first registered calibrator, in id order, that provides `kind`: how
    /// the host finds a provider for a statistic a codec or allocator needs but the preset does
    /// not list. `None` when no registered calibrator provides it.
    pub fn calibrator_for(&self, kind: StatKind) -> Option<Box<dyn Calibrator>> {
        self.calibrators.values().map(|s| (s.value)()).find(|c| c.provides() == kind)
    }

    /// The allocator `id`, or an error listing the registered ones.
    pub fn allocator(&self, id: &str) -> Result<Arc<dyn Allocator>> {
        self.allocators
            .get(id)
            .map(|s| s.value.clone())
            .ok_or_else(|| unknown(&self.allocators, "allocator", id))
    }

    /// Registered codecs as `(id, source, codec)`, sorted by id.
    pub fn codecs(&self) -> impl Iterator<Item = (&str, &str, &Arc<dyn Codec>)> {
        self.codecs.iter().map(|(id, s)| (id.as_str(), s.source.as_str(), &s.value))
    }

    /// Registered calibrator ids with their sources, sorted by id.
    pub fn calibrators(&self) -> impl Iterator<Item = (&str, &str)> {
        self.calibrators.iter().map(|(id, s)| (id.as_str(), s.source.as_str()))
    }

    /// Registered allocators as `(id, source, allocator)`, sorted by id.
    pub fn allocators(&self) -> impl Iterator<Item = (&str, &str, &Arc<dyn Allocator>)> {
        self.allocators.iter().map(|(id, s)| (id.as_str(), s.source.as_str(), &s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoded, LayerStats, Params, WeightView};

    struct Named(&'static str);
    impl Codec for Named {
        fn id(&self) -> &str {
            self.0
        }
        fn encode(&self, _: WeightView<'_>, _: &LayerStats, _: &Params) -> Result<Encoded> {
            Err(Error::invalid_input("test codec"))
        }
        fn decode(&self, _: &Encoded) -> Result<Vec<f32>> {
            Err(Error::corrupt("test codec"))
        }
    }

    #[test]
    fn duplicate_ids_name_both_sources() {
        let mut registry = Registry::new();
        registry.add_codec(Arc::new(Named("q")), "crate-a 1.0").unwrap();
        let err = registry.add_codec(Arc::new(Named("q")), "libplugin.so").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Registry);
        assert!(err.message().contains("crate-a 1.0") && err.message().contains("libplugin.so"), "{err}");
    }

    #[test]
    fn unknown_ids_list_the_known_ones() {
        let mut registry = Registry::new();
        registry.add_codec(Arc::new(Named("alpha")), "a").unwrap();
        registry.add_codec(Arc::new(Named("beta")), "b").unwrap();
        let err = registry.codec("gamma").err().unwrap();
        assert!(err.message().contains("`gamma`") && err.message().contains("alpha, beta"), "{err}");
        assert!(registry.allocator("x").err().unwrap().message().contains("registered: none"));
    }

    /// Provides one statistic, observes nothing.
    struct Provides(&'static str, StatKind);
    impl Calibrator for Provides {
        fn id(&self) -> &str {
            self.0
        }
        fn provides(&self) -> StatKind {
            self.1
        }
        fn observe_input(&mut self, _: &crate::LayerInfo, _: WeightView<'_>) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self, _: &crate::LayerInfo, _: &mut LayerStats) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_provider_of_a_statistic_is_the_first_registered_by_id() {
        let mut registry = Registry::new();
        for (id, kind) in [("zeta", StatKind::Gram), ("beta", StatKind::ActScale), ("alpha", StatKind::Gram)] {
            registry.add_calibrator(id, Arc::new(move || Box::new(Provides(id, kind))), "test").unwrap();
        }
        assert_eq!(registry.calibrator_for(StatKind::Gram).unwrap().id(), "alpha");
        assert_eq!(registry.calibrator_for(StatKind::ActScale).unwrap().id(), "beta");
        assert!(registry.calibrator_for(StatKind::FisherDiag).is_none());
        for kind in [StatKind::ActScale, StatKind::HessianDiag, StatKind::Gram, StatKind::FisherDiag] {
            let needs = crate::StatsNeeds::of(kind);
            assert!(needs.wants(kind) && !needs.is_none());
            assert_eq!(needs.union(crate::StatsNeeds::NONE), needs);
            assert!(!crate::StatsNeeds::NONE.wants(kind));
        }
    }

    #[test]
    fn version_mismatch_is_refused() {
        let err = check_version("codec", "q", "old-crate 0.1", API_VERSION + 1).unwrap_err();
        assert!(err.message().contains("old-crate 0.1") && err.message().contains("version"), "{err}");
    }
}
