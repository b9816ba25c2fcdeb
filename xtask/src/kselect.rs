//! Which guest kernel source to use, and why.
//!
//! The order:
//! 1. `HOMI_KERNEL`, when set: `X.Y` (the newest `linux-source-X.Y`, the suites of
//!    `KERNEL_SUITES` in order), an exact Debian version (`7.3~rc7-1~exp1`), or `newest`;
//! 2. the verified kernel of `qemu/versions.sh`, when its source is already unpacked in
//!    the cache (no network) or a suite still offers it;
//! 3. the newest `linux-source-X.Y` with X.Y at least the verified one's, from the first
//!    suite that offers any (sid, then experimental).
//!
//! Nothing here talks to the network itself: `qemu/fetch-kernel.sh list` does, and this
//! module parses what it prints (`apt-cache show`).

use std::cmp::Ordering;
use std::fmt;

use anyhow::bail;

/// One kernel source package a suite offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// `linux-source-X.Y`.
    pub pkg: String,
    /// The Debian version, e.g. `7.2.13-1`.
    pub version: String,
    /// The Debian suite, e.g. `sid`.
    pub suite: String,
}

impl Offer {
    /// `X.Y` of `linux-source-X.Y`.
    pub fn series(&self) -> Option<(u32, u32)> {
        series_of(&self.pkg)
    }
}

/// Why a kernel was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The version of `qemu/versions.sh`.
    Verified,
    /// The verified kernel is gone; the newest one the suite offers.
    NewestIn(String),
    /// `HOMI_KERNEL` asked for it.
    Override(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Verified => write!(f, "verified"),
            Why::NewestIn(s) => write!(f, "newest in {s}; the verified kernel is gone"),
            Why::Override(v) => write!(f, "override HOMI_KERNEL={v}"),
        }
    }
}

/// The chosen kernel source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// What to fetch.
    pub offer: Offer,
    /// Why it was chosen.
    pub why: Why,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} from {} ({})", self.offer.pkg, self.offer.version, self.offer.suite, self.why)
    }
}

/// What `HOMI_KERNEL` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Unset: the verified kernel, else the newest.
    Default,
    /// `newest`: the newest series in the first suite that offers one.
    Newest,
    /// `X.Y`: the newest `linux-source-X.Y`.
    Series(u32, u32),
    /// An exact Debian version.
    Exact(String),
}

impl Request {
    /// Parses `HOMI_KERNEL` (unset or empty: `Default`).
    pub fn parse(v: Option<&str>) -> Request {
        match v.map(str::trim) {
            None | Some("") => Request::Default,
            Some("newest") => Request::Newest,
            Some(v) => match parse_series(v) {
                Some((a, b)) => Request::Series(a, b),
                None => Request::Exact(v.to_owned()),
            },
        }
    }
}

/// `X.Y` → (X, Y); nothing else.
fn parse_series(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    let num = |x: &str| (!x.is_empty() && x.bytes().all(|c| c.is_ascii_digit())).then(|| x.parse().ok()).flatten();
    Some((num(a)?, num(b)?))
}

/// `linux-source-X.Y` → (X, Y).
pub fn series_of(pkg: &str) -> Option<(u32, u32)> {
    parse_series(pkg.strip_prefix("linux-source-")?)
}

/// The `Package:`/`Version:` pairs of `apt-cache show` output, for `linux-source-X.Y`
/// packages only, as offers of `suite`.
pub fn parse_apt_show(text: &str, suite: &str) -> Vec<Offer> {
    let mut offers = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        if let (Some(pkg), Some(version)) = (field("Package"), field("Version")) {
            let offer = Offer { pkg: pkg.to_owned(), version: version.to_owned(), suite: suite.to_owned() };
            if series_of(pkg).is_some() && !offers.contains(&offer) {
                offers.push(offer);
            }
        }
    }
    offers
}

/// Debian's version order (deb-version(7)): epoch, then upstream version and revision,
/// each compared as alternating non-digit and digit runs, where `~` sorts before
/// anything, even the end of the string.
pub fn cmp_debian(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up.to_owned(), rev.to_owned()),
            None => (epoch, rest.to_owned(), String::new()),
        }
    };
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| cmp_part(&ua, &ub)).then_with(|| cmp_part(&ra, &rb))
}

/// The weight of one character in a non-digit run: `~` first, then the end of the run,
/// then letters, then everything else.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn cmp_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        let na = a.iter().take_while(|c| !c.is_ascii_digit()).count();
        let nb = b.iter().take_while(|c| !c.is_ascii_digit()).count();
        for i in 0..na.max(nb) {
            let ca = (i < na).then(|| a[i]);
            let cb = (i < nb).then(|| b[i]);
            match weight(ca).cmp(&weight(cb)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        (a, b) = (&a[na..], &b[nb..]);
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let num = |d: &[u8]| d.iter().skip_while(|&&c| c == b'0').map(|&c| char::from(c)).collect::<String>();
        let (xa, xb) = (num(&a[..da]), num(&b[..db]));
        match xa.len().cmp(&xb.len()).then_with(|| xa.cmp(&xb)) {
            Ordering::Equal => {}
            o => return o,
        }
        (a, b) = (&a[da..], &b[db..]);
    }
    Ordering::Equal
}

/// The newest offer of `suite` passing `keep`: highest series, then highest version.
fn newest<'a>(offers: &'a [Offer], suite: &str, keep: impl Fn(&Offer) -> bool) -> Option<&'a Offer> {
    offers
        .iter()
        .filter(|o| o.suite == suite && keep(o))
        .max_by(|a, b| a.series().cmp(&b.series()).then_with(|| cmp_debian(&a.version, &b.version)))
}

/// Picks the kernel. `verified` is the kernel of `qemu/versions.sh`; `verified_cached`
/// says its source is already unpacked (then `offers` may be empty: nothing was asked
/// of the network). `suites` is the search order; `offers` what each one offers.
pub fn select(
    request: &Request,
    verified: &Offer,
    verified_cached: bool,
    suites: &[String],
    offers: &[Offer],
) -> anyhow::Result<Choice> {
    let raw = std::env::var("HOMI_KERNEL").unwrap_or_default();
    select_with(request, &raw, verified, verified_cached, suites, offers)
}

fn select_with(
    request: &Request,
    raw: &str,
    verified: &Offer,
    verified_cached: bool,
    suites: &[String],
    offers: &[Offer],
) -> anyhow::Result<Choice> {
    let over = |offer: &Offer| Choice { offer: offer.clone(), why: Why::Override(raw.to_owned()) };
    let list = || {
        if offers.is_empty() {
            format!("none in {}", suites.join(", "))
        } else {
            offers.iter().map(|o| format!("{} {} ({})", o.pkg, o.version, o.suite)).collect::<Vec<_>>().join(", ")
        }
    };
    let first_newest = |keep: &dyn Fn(&Offer) -> bool| suites.iter().find_map(|s| newest(offers, s, keep));
    match request {
        Request::Default => {
            if verified_cached || offers.iter().any(|o| o.pkg == verified.pkg && o.version == verified.version) {
                return Ok(Choice { offer: verified.clone(), why: Why::Verified });
            }
            let floor = verified.series();
            match first_newest(&|o| o.series() >= floor) {
                Some(o) => Ok(Choice { offer: o.clone(), why: Why::NewestIn(o.suite.clone()) }),
                None => bail!(
                    "the verified kernel {} {} is gone from {}, and none of them offers {} or newer \
                     (Debian offers: {}); set HOMI_KERNEL=X.Y or an exact Debian version, or \
                     HOMI_KDIR=<a kernel build directory>",
                    verified.pkg,
                    verified.version,
                    suites.join(", "),
                    verified.pkg,
                    list()
                ),
            }
        }
        Request::Newest => match first_newest(&|_| true) {
            Some(o) => Ok(over(o)),
            None => bail!("HOMI_KERNEL=newest: no linux-source-X.Y in {}; unset HOMI_KERNEL", suites.join(", ")),
        },
        Request::Series(a, b) => match first_newest(&|o| o.series() == Some((*a, *b))) {
            Some(o) => Ok(over(o)),
            None if verified_cached && verified.series() == Some((*a, *b)) => Ok(over(verified)),
            None => bail!(
                "HOMI_KERNEL={raw}: no linux-source-{a}.{b} in {} (Debian offers: {}); set HOMI_KERNEL to \
                 one of those, or unset it for the verified kernel {}",
                suites.join(", "),
                list(),
                verified.version
            ),
        },
        Request::Exact(v) => {
            let found = suites.iter().find_map(|s| offers.iter().find(|o| &o.suite == s && &o.version == v));
            match found {
                Some(o) => Ok(over(o)),
                None if verified_cached && &verified.version == v => Ok(over(verified)),
                None => bail!(
                    "HOMI_KERNEL={raw}: no linux-source-X.Y at version {v} in {} (Debian offers: {}); set \
                     HOMI_KERNEL to one of those, or unset it for the verified kernel {}",
                    suites.join(", "),
                    list(),
                    verified.version
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(pkg: &str, version: &str, suite: &str) -> Offer {
        Offer { pkg: pkg.into(), version: version.into(), suite: suite.into() }
    }

    fn suites() -> Vec<String> {
        vec!["sid".into(), "experimental".into()]
    }

    fn verified() -> Offer {
        offer("linux-source-7.2", "7.2.13-1", "sid")
    }

    #[test]
    fn debian_order() {
        let ordered = [
            "7.2.9-1",
            "7.2.13-1",
            "7.2.13-1+b1",
            "7.2.13-2",
            "7.3~rc1-1~exp1",
            "7.3~rc7-1~exp1",
            "7.3~rc7-1",
            "7.3-1~exp1",
            "7.3-1",
            "7.3.1-1",
            "7.10-1",
            "1:6.0-1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(cmp_debian(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(cmp_debian(w[1], w[0]), Ordering::Greater, "{} > {}", w[1], w[0]);
        }
        assert_eq!(cmp_debian("7.2.13-1", "7.2.13-1"), Ordering::Equal);
        assert_eq!(cmp_debian("7.02-1", "7.2-1"), Ordering::Equal);
    }

    #[test]
    fn parses_apt_cache_show() {
        let text = "Package: linux-source-7.3\nSource: linux\nVersion: 7.3~rc7-1~exp1\nInstalled-Size: 1\n\
                    Description: Linux kernel source for version 7.3 with Debian patches\n\
                    \n\
                    Package: linux-source\nVersion: 7.3~rc7-1~exp1\n\
                    \n\
                    Package: linux-source-7.2\nVersion: 7.2.13-1\n\n";
        assert_eq!(
            parse_apt_show(text, "experimental"),
            vec![
                offer("linux-source-7.3", "7.3~rc7-1~exp1", "experimental"),
                offer("linux-source-7.2", "7.2.13-1", "experimental")
            ]
        );
        assert!(parse_apt_show("", "sid").is_empty());
    }

    #[test]
    fn parses_requests() {
        assert_eq!(Request::parse(None), Request::Default);
        assert_eq!(Request::parse(Some(" ")), Request::Default);
        assert_eq!(Request::parse(Some("newest")), Request::Newest);
        assert_eq!(Request::parse(Some("7.3")), Request::Series(7, 3));
        assert_eq!(Request::parse(Some("7.3~rc7-1~exp1")), Request::Exact("7.3~rc7-1~exp1".into()));
        assert_eq!(Request::parse(Some("7.2.13-1")), Request::Exact("7.2.13-1".into()));
        assert_eq!(series_of("linux-source-7.10"), Some((7, 10)));
        assert_eq!(series_of("linux-source"), None);
    }

    #[test]
    fn verified_first() {
        let today =
            [offer("linux-source-7.2", "7.2.13-1", "sid"), offer("linux-source-7.3", "7.3~rc7-1~exp1", "experimental")];
        let c = select_with(&Request::Default, "", &verified(), false, &suites(), &today).unwrap();
        assert_eq!(c, Choice { offer: verified(), why: Why::Verified });
        // A cached source needs no index at all.
        let c = select_with(&Request::Default, "", &verified(), true, &suites(), &[]).unwrap();
        assert_eq!(c.why, Why::Verified);
        assert_eq!(c.to_string(), "linux-source-7.2 7.2.13-1 from sid (verified)");
    }

    #[test]
    fn newest_when_verified_is_gone() {
        // 7.3 entered sid; experimental already has 7.4 release candidates.
        let later = [
            offer("linux-source-7.3", "7.3.1-1", "sid"),
            offer("linux-source-7.3", "7.3-1", "sid"),
            offer("linux-source-7.4", "7.4~rc2-1~exp1", "experimental"),
        ];
        let c = select_with(&Request::Default, "", &verified(), false, &suites(), &later).unwrap();
        assert_eq!(c.offer, offer("linux-source-7.3", "7.3.1-1", "sid"));
        assert_eq!(c.why, Why::NewestIn("sid".into()));
        // Nothing in sid: experimental.
        let c = select_with(&Request::Default, "", &verified(), false, &suites(), &later[2..]).unwrap();
        assert_eq!(c.offer.version, "7.4~rc2-1~exp1");
        // Only older series: refuse, naming what exists.
        let old = [offer("linux-source-6.12", "6.12.9-1", "sid")];
        let e = select_with(&Request::Default, "", &verified(), false, &suites(), &old).unwrap_err().to_string();
        assert!(e.contains("7.2.13-1 is gone") && e.contains("linux-source-6.12 6.12.9-1 (sid)"), "{e}");
    }

    #[test]
    fn overrides() {
        let today =
            [offer("linux-source-7.2", "7.2.13-1", "sid"), offer("linux-source-7.3", "7.3~rc7-1~exp1", "experimental")];
        let c = select_with(&Request::Series(7, 3), "7.3", &verified(), true, &suites(), &today).unwrap();
        assert_eq!(c.to_string(), "linux-source-7.3 7.3~rc7-1~exp1 from experimental (override HOMI_KERNEL=7.3)");
        let c = select_with(&Request::Newest, "newest", &verified(), true, &suites(), &today).unwrap();
        assert_eq!(c.offer.version, "7.2.13-1", "sid comes first");
        let exact = Request::Exact("7.3~rc7-1~exp1".into());
        let c = select_with(&exact, "7.3~rc7-1~exp1", &verified(), true, &suites(), &today).unwrap();
        assert_eq!(c.offer.suite, "experimental");
        let e = select_with(&Request::Series(9, 9), "9.9", &verified(), true, &suites(), &today).unwrap_err();
        assert!(e.to_string().starts_with("HOMI_KERNEL=9.9: no linux-source-9.9 in sid, experimental"), "{e}");
        let e = select_with(&Request::Exact("7.2.99-1".into()), "7.2.99-1", &verified(), true, &suites(), &today);
        assert!(e.is_err());
    }
}
