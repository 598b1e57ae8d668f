//! Loading a spec file and its `extends` chain into one merged, located tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Located, did_you_mean, list_code};
use super::node::{Kind, Loc, Node, merge};

mod shipped {
    include!(concat!(env!("OUT_DIR"), "/shipped_specs.rs"));
}

/// The largest spec file kiln reads (a real spec is a few hundred bytes).
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Read a text file a user named (a spec, an `extends` base, a
/// `config.json`), refusing what is not a regular file or holds more than
/// `limit` bytes *before* reading it: `extends = "/dev/zero"` or a FIFO would
/// otherwise read forever or block. Invalid UTF-8 is an
/// [`InvalidData`](std::io::ErrorKind::InvalidData) error.
pub fn read_text_file(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("it is {what}")));
    }
    let too_big = |n: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "it is {n} bytes long, more than the {limit} bytes kiln reads from such a file"
            ),
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take`: a file that grows (or a /proc file whose size reads 0) still
    // stops at the limit.
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidData,
            format!("it is not UTF-8 text ({e})"),
        )
    })
}

/// Names of the specs shipped in `models/` (embedded in the binary), sorted.
pub fn shipped_names() -> impl Iterator<Item = &'static str> {
    shipped::SHIPPED.iter().map(|(n, _)| *n)
}

/// The TOML text of a shipped spec.
pub fn shipped_spec(name: &str) -> Option<&'static str> {
    shipped::SHIPPED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

/// The path errors name for an embedded shipped spec.
pub(crate) fn shipped_path(name: &str) -> PathBuf {
    PathBuf::from(format!("models/{name}.toml"))
}

/// Every file read while loading one spec; [`Loc::file`] indexes it.
#[derive(Debug, Default)]
pub(crate) struct Files {
    files: Vec<SourceFile>,
}

#[derive(Debug)]
pub(crate) struct SourceFile {
    /// The path as given (or as joined from an `extends`), never canonicalised.
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl Files {
    pub fn add(&mut self, path: PathBuf, text: &str) -> usize {
        self.files.push(SourceFile {
            path,
            text: Arc::from(text),
        });
        self.files.len() - 1
    }

    pub fn get(&self, i: usize) -> Option<&SourceFile> {
        self.files.get(i)
    }
}

/// Where a spec's text came from: decides how its `extends` is looked up.
#[derive(Debug, Clone)]
enum Origin {
    Disk(PathBuf),
    Shipped(String),
}

impl Origin {
    /// Identity for cycle detection.
    fn identity(&self) -> String {
        match self {
            Origin::Disk(p) => std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            Origin::Shipped(n) => format!("shipped:{n}"),
        }
    }

    fn display(&self) -> PathBuf {
        match self {
            Origin::Disk(p) => p.clone(),
            Origin::Shipped(n) => shipped_path(n),
        }
    }
}

/// Parse `src` (read from `path`) and everything it extends, merged, with
/// `extends` removed. The file itself is `files`' first entry.
pub(crate) fn load_tree(files: &mut Files, src: &str, path: &Path) -> Result<Node, Located> {
    let mut chain = Vec::new();
    load_one(files, src, Origin::Disk(path.to_path_buf()), &mut chain)
}

/// Parse a shipped spec and everything it extends.
pub(crate) fn load_shipped_tree(files: &mut Files, name: &str) -> Option<Result<Node, Located>> {
    let text = shipped_spec(name)?;
    let mut chain = Vec::new();
    Some(load_one(
        files,
        text,
        Origin::Shipped(name.to_string()),
        &mut chain,
    ))
}

fn load_one(
    files: &mut Files,
    src: &str,
    origin: Origin,
    chain: &mut Vec<(String, PathBuf)>,
) -> Result<Node, Located> {
    let file = files.add(origin.display(), src);
    chain.push((origin.identity(), origin.display()));
    let mut node = Node::parse(src, file)?;
    let Some(ext) = node.remove("extends") else {
        return Ok(node);
    };
    let at = ext.key_loc.clone().or(ext.value.loc.clone());
    let target = match &ext.value.kind {
        Kind::Str(s) => s.clone(),
        _ => {
            return Err(Located::new(
                at,
                format!("expected a string for `extends`, found {}", ext.value.describe()),
                Some(
                    "name a shipped model (`extends = \"gpt2\"`) or a path relative to this file (`extends = \"base.toml\"`)"
                        .into(),
                ),
            ));
        }
    };
    let (text, base) = find_base(&target, &origin, at.clone())?;
    let id = base.identity();
    if let Some(first) = chain.iter().position(|(i, _)| *i == id) {
        let mut names: Vec<String> = chain[first..]
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        names.push(base.display().display().to_string());
        return Err(Located::new(
            at,
            format!("`extends` cycle: {}", names.join(" -> ")),
            Some(
                "remove one of these `extends` keys so that the chain ends in a spec without one"
                    .into(),
            ),
        ));
    }
    let mut merged = load_one(files, &text, base, chain)?;
    chain.pop();
    merge(&mut merged, node);
    // The root keeps the derived file's location (line 1 of the file being loaded).
    merged.loc = Some(Loc { file, span: 0..0 });
    Ok(merged)
}

/// Locate the spec `extends = "target"` names, as seen from `from`.
fn find_base(target: &str, from: &Origin, at: Option<Loc>) -> Result<(String, Origin), Located> {
    let is_path = target.ends_with(".toml") || target.contains('/') || target.contains('\\');
    let unknown = |target: &str| {
        let names: Vec<&str> = shipped_names().collect();
        let help = match did_you_mean(target, &names) {
            Some(s) => format!("did you mean \"{s}\"? (a path to a spec file must end in `.toml`)"),
            None => format!(
                "shipped models are {}; a path to a spec file must end in `.toml`",
                list_code(&names)
            ),
        };
        Located::new(
            at.clone(),
            format!("unknown model \"{target}\" in `extends`"),
            Some(help),
        )
    };
    match from {
        Origin::Disk(p) => {
            let dir = p.parent().unwrap_or(Path::new(""));
            if is_path {
                let joined = dir.join(target);
                return match read_text_file(&joined, MAX_SPEC_BYTES) {
                    Ok(text) => Ok((text, Origin::Disk(joined))),
                    Err(e) => Err(Located::new(
                        at.clone(),
                        match e.kind() {
                            std::io::ErrorKind::NotFound => {
                                format!("base spec `{}` does not exist", joined.display())
                            }
                            _ => format!("cannot read base spec `{}`: {e}", joined.display()),
                        },
                        Some(format!(
                            "`extends` paths are relative to the file that contains them (here `{}`)",
                            if dir.as_os_str().is_empty() {
                                ".".to_string()
                            } else {
                                dir.display().to_string()
                            }
                        )),
                    )),
                };
            }
            // A shipped name: a file of that name beside this one wins (unless
            // it is this very file), then the embedded copy.
            let beside = dir.join(format!("{target}.toml"));
            if beside.is_file()
                && Origin::Disk(beside.clone()).identity() != from.identity()
                && let Ok(text) = read_text_file(&beside, MAX_SPEC_BYTES)
            {
                return Ok((text, Origin::Disk(beside)));
            }
            match shipped_spec(target) {
                Some(text) => Ok((text.to_string(), Origin::Shipped(target.to_string()))),
                None => Err(unknown(target)),
            }
        }
        Origin::Shipped(_) => {
            let name = target.strip_prefix("./").unwrap_or(target);
            let name = name.strip_suffix(".toml").unwrap_or(name);
            match shipped_spec(name) {
                Some(text) if !name.contains('/') && !name.contains('\\') => {
                    Ok((text.to_string(), Origin::Shipped(name.to_string())))
                }
                _ => Err(unknown(target)),
            }
        }
    }
}
