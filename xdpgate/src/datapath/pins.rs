//! The pinned datapath on bpffs (layout in `xdpgate_common::pins`): the
//! directory checked and locked, what a start finds there judged before
//! anything is touched, the `meta` record, and the removal of everything
//! (`xdpgate down`).
//!
//! Rules: pins this build did not make are never modified. A directory
//! owned by another user or writable by others, a `meta` record of another
//! schema or none at all beside other pins, a map whose type, key, value,
//! capacity or flags differ from the object's, a link that runs a program
//! not named `xdpgate` or is no XDP link: each is refused with its path, and
//! nothing is changed.
use std::{
    collections::BTreeMap,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
    time::SystemTime,
};

use thiserror::Error;
use xdpgate_common::{
    PROGRAM_NAME,
    pins::{LINKS_DIR, MAPS_DIR_PREFIX, META_MAGIC, META_PIN, Meta, SCHEMA_VERSION},
};
use xdpgate_model::fsafe::{FsafeError, SafeDir};

use crate::sys::object::{self, BPF_LINK_TYPE_XDP, LinkInfo, MapInfo};

/// Why the pins cannot be used. Nothing was changed.
#[derive(Debug, Error)]
pub enum PinError {
    /// The directory is not safe to trust (the check is
    /// [`SafeDir::open`]'s, shared with the state and run directories).
    #[error(transparent)]
    Unsafe(FsafeError),
    /// Another process holds the pins.
    #[error(
        "another process is using the pins in {0} (a second daemon, or `xdpgate down`); only one may change them at a time"
    )]
    Busy(PathBuf),
    /// The pins are of another schema.
    #[error("{path} holds a datapath of schema {found}, this build has schema {ours}: {way_out}")]
    Schema {
        /// The meta record.
        path: PathBuf,
        /// Its schema.
        found: u32,
        /// [`SCHEMA_VERSION`].
        ours: u32,
        /// What to do.
        way_out: &'static str,
    },
    /// Something under the directory is not what this build would have left.
    #[error(
        "{path}: {why}; it is not xdpgate's (or was changed by hand), so it is left alone: remove it by hand, or with `xdpgate down` if it is xdpgate's"
    )]
    Foreign {
        /// The pin.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A map whose size the configuration sets was pinned with another size
    /// (a start with a changed setting): it is neither adopted nor replaced,
    /// since replacing it would reset what it holds under running links.
    #[error(
        "{path} was made with {found} entries and the configuration asks for {wanted} ({setting}): the running datapath keeps the size it was started with. Set {setting} back to {found_setting}, or run `xdpgate down` (this detaches the interfaces and clears the table) and start again with the new size"
    )]
    Resized {
        /// The pin.
        path: PathBuf,
        /// Its capacity.
        found: u32,
        /// The capacity the configuration asks for.
        wanted: u32,
        /// The setting that sizes it.
        setting: &'static str,
        /// What to set it to for this datapath (the value, or a hint).
        found_setting: String,
    },
    /// A filesystem or bpf(2) call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What one map of the object must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags.
    pub flags: u32,
    /// The configuration setting that sizes it, if one does.
    pub sized_by: Option<&'static str>,
}

impl MapSpec {
    fn with_capacity(&self, max_entries: u32) -> MapSpec {
        MapSpec {
            max_entries,
            ..self.clone()
        }
    }

    fn differs(&self, info: &MapInfo) -> Option<String> {
        let mut diffs = Vec::new();
        let mut check = |what: &str, want: u32, got: u32| {
            if want != got {
                diffs.push(format!("{what} {got} (expected {want})"));
            }
        };
        check("type", self.map_type, info.map_type);
        check("key size", self.key_size, info.key_size);
        check("value size", self.value_size, info.value_size);
        check("capacity", self.max_entries, info.max_entries);
        check("flags", self.flags, info.flags);
        (!diffs.is_empty()).then(|| diffs.join(", "))
    }
}

/// A pinned XDP link of xdpgate's.
#[derive(Debug)]
pub struct PinnedLink {
    /// The interface name it is pinned under.
    pub iface: String,
    /// The pin.
    pub path: PathBuf,
    /// The link.
    pub fd: OwnedFd,
    /// What the kernel says about it.
    pub info: LinkInfo,
    /// When it was pinned (first attached).
    pub since: SystemTime,
}

/// What a start found under the directory.
#[derive(Debug)]
pub enum Found {
    /// Nothing (or the remains of a cold start that never attached, removed).
    Empty,
    /// A datapath of this schema: its record and its links.
    Ours {
        /// The `meta` record.
        meta: Meta,
        /// The links, by interface name.
        links: Vec<PinnedLink>,
    },
    /// A datapath of an older schema, to migrate: new maps beside its maps,
    /// its links switched to this build's program, then the commit.
    Older {
        /// The `meta` record.
        meta: Meta,
        /// The links, by interface name.
        links: Vec<PinnedLink>,
    },
}

pub use crate::paths::maps_dir;

/// The pin directory, locked (`flock` on the directory) while this lives.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    _lock: OwnedFd,
}

impl PinDir {
    /// Creates `root` (mode 0700) if needed, checks that it is owned by us and
    /// writable by no one else, and locks it without waiting.
    pub fn open(root: &Path) -> Result<PinDir, PinError> {
        let fd: OwnedFd = SafeDir::create(root, 0o700)
            .map_err(|e| match e {
                FsafeError::Io {
                    what, path, source, ..
                } => PinError::Io { what, path, source },
                e @ FsafeError::Unsafe { .. } => PinError::Unsafe(e),
            })?
            .into_fd();
        // SAFETY: a valid descriptor we own; a non-blocking exclusive lock.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PinError::Busy(root.to_path_buf()));
        }
        Ok(PinDir {
            root: root.to_path_buf(),
            _lock: fd,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` of this build's schema is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join(maps_dir(SCHEMA_VERSION)).join(name)
    }

    /// Where the link of `iface` is pinned.
    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.root.join(LINKS_DIR).join(iface)
    }

    fn meta_path(&self) -> PathBuf {
        self.root.join(META_PIN)
    }

    /// Judges what is pinned (see the module documentation), changing
    /// nothing it cannot use, and tidies what an interrupted step of its own
    /// left: the remains of a cold start that never attached (a record never
    /// committed, no link) are removed; so are the maps of older schemas once
    /// this schema is committed (a migration's last step), and, before a
    /// migration, maps of this schema that an earlier attempt never committed
    /// (a program still running on them keeps them alive).
    pub fn inspect(&self, specs: &BTreeMap<String, MapSpec>) -> Result<Found, PinError> {
        let meta_path = self.meta_path();
        let mut schemas = BTreeMap::new();
        for n in list(&self.root)? {
            if n == META_PIN || n == LINKS_DIR {
                continue;
            }
            match n
                .strip_prefix(MAPS_DIR_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(schema) => {
                    schemas.insert(schema, list(&self.root.join(&n))?);
                }
                None => {
                    return Err(PinError::Foreign {
                        path: self.root.join(n),
                        why: "an unexpected entry".into(),
                    });
                }
            }
        }
        let links = list(&self.root.join(LINKS_DIR))?;
        if !meta_path.exists() {
            let maps: usize = schemas.values().map(Vec::len).sum();
            if maps == 0 && links.is_empty() {
                return Ok(Found::Empty);
            }
            return Err(PinError::Foreign {
                path: self.root.clone(),
                why: format!(
                    "pins without a {META_PIN} record ({maps} maps, {} links)",
                    links.len()
                ),
            });
        }
        let meta = read_meta(&meta_path)?;
        if meta.schema > SCHEMA_VERSION {
            return Err(PinError::Schema {
                path: meta_path,
                found: meta.schema,
                ours: SCHEMA_VERSION,
                way_out: "it was installed by a newer xdpgate, and a downgrade cannot reuse it. Run the newer binary, or remove it with `xdpgate down` (this detaches the interfaces) and start this one",
            });
        }
        if meta.schema == SCHEMA_VERSION {
            for name in schemas.get(&SCHEMA_VERSION).into_iter().flatten() {
                self.judge_map(name, specs)?;
            }
        }
        let mut found = Vec::new();
        for iface in links {
            found.push(self.judge_link(&iface)?);
        }
        if meta.schema < SCHEMA_VERSION {
            if schemas.contains_key(&SCHEMA_VERSION) {
                log::info!(
                    "removing the maps of schema {SCHEMA_VERSION} an earlier migration left uncommitted in {}",
                    self.root.display()
                );
                self.remove_maps(SCHEMA_VERSION)?;
            }
            return Ok(Found::Older { meta, links: found });
        }
        if meta.committed_unix_ns == 0 && found.is_empty() {
            log::info!(
                "removing the remains of a start that never attached in {}",
                self.root.display()
            );
            self.remove_all()?;
            return Ok(Found::Empty);
        }
        self.remove_older()?;
        Ok(Found::Ours { meta, links: found })
    }

    /// Checks that map `name` of this schema has the shape this build makes.
    fn judge_map(&self, name: &str, specs: &BTreeMap<String, MapSpec>) -> Result<(), PinError> {
        let path = self.map_path(name);
        let Some(spec) = specs.get(name) else {
            return Err(PinError::Foreign {
                path,
                why: "no map of that name in this build's datapath".into(),
            });
        };
        let fd = object::obj_get(&path).map_err(io_err("cannot open the pin", &path))?;
        let info = object::map_info(fd.as_fd()).map_err(|_| PinError::Foreign {
            path: path.clone(),
            why: "not a BPF map".into(),
        })?;
        if let Some(setting) = spec.sized_by
            && info.max_entries != spec.max_entries
            && spec
                .with_capacity(info.max_entries)
                .differs(&info)
                .is_none()
        {
            return Err(PinError::Resized {
                path,
                found: info.max_entries,
                wanted: spec.max_entries,
                setting,
                found_setting: if setting.contains(" and ") {
                    "what they were when it started".to_owned()
                } else {
                    super::acl::setting_of(setting, info.max_entries)
                        .unwrap_or_else(|| info.max_entries.to_string())
                },
            });
        }
        match spec.differs(&info) {
            Some(why) => Err(PinError::Foreign {
                path,
                why: format!("a map of the wrong shape: {why}"),
            }),
            None => Ok(()),
        }
    }

    /// Removes the maps of `schema` (their pins: maps a program uses live on).
    fn remove_maps(&self, schema: u32) -> Result<(), PinError> {
        let dir = self.root.join(maps_dir(schema));
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &dir)(e)),
        }
    }

    /// Removes the maps of every schema older than this one (after a
    /// migration committed: no program uses them any more).
    pub fn remove_older(&self) -> Result<(), PinError> {
        for n in list(&self.root)? {
            if let Some(schema) = n
                .strip_prefix(MAPS_DIR_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
                && schema < SCHEMA_VERSION
            {
                log::info!(
                    "removing the maps of schema {schema}, replaced by schema {SCHEMA_VERSION}"
                );
                self.remove_maps(schema)?;
            }
        }
        Ok(())
    }

    /// Removes the maps of this schema that a migration made and did not
    /// commit (the datapath in force is the older one).
    pub fn abandon_migration(&self) -> Result<(), PinError> {
        self.remove_maps(SCHEMA_VERSION)
    }

    fn judge_link(&self, iface: &str) -> Result<PinnedLink, PinError> {
        let path = self.link_path(iface);
        let fd = object::obj_get(&path).map_err(io_err("cannot open the pin", &path))?;
        let foreign = |why: String| PinError::Foreign {
            path: path.clone(),
            why,
        };
        let info = object::link_info(fd.as_fd()).map_err(|_| foreign("not a BPF link".into()))?;
        if info.link_type != BPF_LINK_TYPE_XDP {
            return Err(foreign(format!(
                "a link of type {}, not XDP",
                info.link_type
            )));
        }
        let prog = object::prog_by_id(info.prog_id)
            .and_then(|p| object::prog_info(p.as_fd()))
            .map_err(io_err("cannot read the program of", &path))?;
        if prog.name != PROGRAM_NAME {
            return Err(foreign(format!(
                "its program is {:?} (id {}), not xdpgate's",
                prog.name, prog.id
            )));
        }
        let since = fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(PinnedLink {
            iface: iface.to_owned(),
            path,
            fd,
            info,
            since,
        })
    }

    /// Creates the maps folder of this schema and the `links/` folder, and
    /// the `meta` record of a cold start, not yet committed
    /// (`committed_unix_ns` 0); a migration keeps the record it found.
    pub fn prepare(&self) -> Result<(), PinError> {
        for d in [maps_dir(SCHEMA_VERSION), LINKS_DIR.to_owned()] {
            let p = self.root.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io_err("cannot create", &p))?;
        }
        let path = self.meta_path();
        if path.exists() {
            return Ok(());
        }
        pin_meta(
            &path,
            &Meta {
                magic: META_MAGIC,
                schema: SCHEMA_VERSION,
                created_unix_ns: unix_ns(),
                ..Meta::default()
            },
        )
    }

    /// Marks the datapath committed, in one update of the `meta` record: the
    /// program with `prog_tag` runs the state now in the maps of this
    /// schema (a migration's commit point).
    pub fn commit(&self, prog_tag: [u8; 8]) -> Result<Meta, PinError> {
        let path = self.meta_path();
        let fd = object::obj_get(&path).map_err(io_err("cannot open the pin", &path))?;
        let mut meta = read_meta(&path)?;
        meta.schema = SCHEMA_VERSION;
        meta.prog_tag = prog_tag;
        meta.committed_unix_ns = unix_ns();
        object::write_record(fd.as_fd(), bytes_of(&meta))
            .map_err(io_err("cannot write the record", &path))?;
        Ok(meta)
    }

    /// Detaches every pinned link and removes every pin and the directory.
    /// Goes on past errors and reports the first.
    pub fn remove_all(&self) -> Result<(), PinError> {
        let mut first = None;
        let links = self.root.join(LINKS_DIR);
        for iface in list(&links).unwrap_or_default() {
            let path = links.join(&iface);
            if let Ok(fd) = object::obj_get(&path) {
                // Detach now, whatever else holds the link.
                let _ = object::link_detach(fd.as_fd());
            }
            if let Err(e) = fs::remove_file(&path) {
                first.get_or_insert(PinError::Io {
                    what: "cannot remove",
                    path,
                    source: e,
                });
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.root)
            && e.kind() != io::ErrorKind::NotFound
        {
            first.get_or_insert(PinError::Io {
                what: "cannot remove",
                path: self.root.clone(),
                source: e,
            });
        }
        first.map_or(Ok(()), Err)
    }

    /// Detaches the link of `iface` and removes its pin.
    pub fn remove_link(&self, iface: &str) -> Result<(), PinError> {
        let path = self.link_path(iface);
        let fd = object::obj_get(&path).map_err(io_err("cannot open the pin", &path))?;
        object::link_detach(fd.as_fd()).map_err(io_err("cannot detach", &path))?;
        fs::remove_file(&path).map_err(io_err("cannot remove", &path))
    }
}

/// Creates a `meta` record holding `meta` and pins it at `path`.
pub fn pin_meta(path: &Path, meta: &Meta) -> Result<(), PinError> {
    let fd = object::create_record(size_of::<Meta>() as u32)
        .map_err(io_err("cannot create the record for", path))?;
    object::write_record(fd.as_fd(), bytes_of(meta))
        .map_err(io_err("cannot write the record", path))?;
    object::obj_pin(fd.as_fd(), path).map_err(io_err("cannot pin", path))
}

/// A program tag as `status` and the log show it: 16 hex digits.
pub fn tag_hex(tag: &[u8; 8]) -> String {
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the `meta` record pinned at `path`, checking that it is one.
pub fn read_meta(path: &Path) -> Result<Meta, PinError> {
    let fd = object::obj_get(path).map_err(io_err("cannot open the pin", path))?;
    let foreign = |why: &str| PinError::Foreign {
        path: path.to_path_buf(),
        why: why.into(),
    };
    let info = object::map_info(fd.as_fd()).map_err(|_| foreign("not a BPF map"))?;
    if info.key_size != 4 || info.value_size as usize != size_of::<Meta>() || info.max_entries != 1
    {
        return Err(foreign("not an xdpgate meta record (wrong shape)"));
    }
    let mut meta = Meta::default();
    // SAFETY: Meta is repr(C) plain integers; any bytes are a valid value.
    let buf =
        unsafe { std::slice::from_raw_parts_mut((&raw mut meta).cast::<u8>(), size_of::<Meta>()) };
    object::read_record(fd.as_fd(), buf).map_err(io_err("cannot read", path))?;
    if meta.magic != META_MAGIC {
        return Err(foreign("not an xdpgate meta record (wrong magic)"));
    }
    Ok(meta)
}

fn bytes_of(meta: &Meta) -> &[u8] {
    // SAFETY: Meta is repr(C) plain integers without padding.
    unsafe { std::slice::from_raw_parts((meta as *const Meta).cast::<u8>(), size_of::<Meta>()) }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The names in `dir`, sorted; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<String>, PinError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", dir)(e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}
