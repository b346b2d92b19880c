//! Collapsed stacks (Brendan Gregg's format, read by inferno, speedscope
//! and flamegraph.pl): process name first, root to leaf, `;`-joined, a
//! space and the count; kernel frames end in `_[k]`.

use std::{collections::BTreeMap, io};

use crate::profile::Profile;

/// One line per distinct stack, sorted, counts merged across threads and
/// processes that share a name.
pub fn folded_lines(profile: &Profile) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for sample in &profile.samples {
        line.clear();
        push_frame(
            &mut line,
            profile.string(profile.process(sample).name),
            false,
        );
        for (name, kernel) in profile.frames_root_first(sample) {
            line.push(';');
            push_frame(&mut line, name, kernel);
        }
        *merged.entry(line.clone()).or_default() += sample.count;
    }
    merged
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// `;` separates frames and a newline ends a stack, so neither may appear
/// inside a name.
fn push_frame(line: &mut String, name: &str, kernel: bool) {
    let name = if name.is_empty() { "[unknown]" } else { name };
    line.extend(name.chars().map(|c| match c {
        ';' => ':',
        '\n' | '\r' => ' ',
        c => c,
    }));
    if kernel {
        line.push_str("_[k]");
    }
}

pub fn write_folded(profile: &Profile, mut out: impl io::Write) -> io::Result<()> {
    for line in folded_lines(profile) {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::fixtures::small_profile;

    #[test]
    fn stacks_are_root_first_with_process_name_and_kernel_suffix() {
        assert_eq!(
            folded_lines(&small_profile()),
            ["app;main;do_syscall_64_[k] 1", "app;main;work;leaf 3"]
        );
    }

    #[test]
    fn same_named_processes_merge_and_separators_are_escaped() {
        let mut profile = small_profile();
        profile.samples[1] = profile.samples[0].clone();
        profile.samples[1].process = 1; // pid 11, also named app
        profile.strings[4] = "leaf;odd\nname".into();
        assert_eq!(folded_lines(&profile), ["app;main;work;leaf:odd name 6"]);
    }

    #[test]
    fn empty_profile_writes_nothing() {
        let mut out = Vec::new();
        write_folded(&crate::profile::Profile::default(), &mut out).unwrap();
        assert!(out.is_empty());
    }
}
