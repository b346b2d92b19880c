//! Interactive flamegraph SVG, drawn by inferno from the collapsed stacks.

use std::io;

use inferno::flamegraph::{
    self,
    color::{MultiPalette, Palette},
};

use super::folded_lines;
use crate::profile::Profile;

/// Text shown on the flamegraph.
#[derive(Clone, Debug, Default)]
pub struct SvgOptions {
    pub title: String,
    pub subtitle: Option<String>,
}

pub fn write_svg(profile: &Profile, options: &SvgOptions, out: impl io::Write) -> io::Result<()> {
    let lines = folded_lines(profile);
    let mut inferno = flamegraph::Options::default();
    inferno.title = options.title.clone();
    inferno.subtitle = options.subtitle.clone();
    inferno.count_name = profile.event.unit_label().into();
    // The "java" palette colours `_[k]` kernel frames apart from user code.
    inferno.colors = Palette::Multi(MultiPalette::Java);
    inferno.deterministic = true;
    match flamegraph::from_lines(&mut inferno, lines.iter().map(String::as_str), out) {
        // inferno still writes a valid SVG saying there was no input.
        Err(err) if lines.is_empty() && err.kind() == io::ErrorKind::InvalidData => Ok(()),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::fixtures::small_profile;

    fn svg_of(profile: &Profile) -> String {
        let mut out = Vec::new();
        let options = SvgOptions {
            title: "test".into(),
            subtitle: None,
        };
        write_svg(profile, &options, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn names_every_function() {
        let svg = svg_of(&small_profile());
        assert!(svg.starts_with("<?xml"));
        // inferno colours `_[k]` frames as kernel code and shows the bare name.
        for name in ["main", "work", "leaf", "do_syscall_64"] {
            assert!(svg.contains(name), "{name} missing");
        }
    }

    #[test]
    fn an_empty_profile_still_gives_an_svg() {
        let svg = svg_of(&Profile::default());
        assert!(svg.contains("</svg>"));
    }
}
