//! `pv3 completions SHELL`: shell completion scripts and the man page, both
//! generated from the clap definition so they cannot drift from it.
//!
//! The generated files are checked in (`completions/`, `docs/pv3.1`) for
//! packagers; `tests/it/ops.rs` fails when they differ from what this module
//! produces. Regenerate them with
//! `PV3_UPDATE_GENERATED=1 cargo test --test it ops::generated_files`.

use std::io::Write;

use anyhow::Result;
use clap::{Arg, CommandFactory};
use clap_complete::Shell;

use crate::cli::{Cli, CompletionTarget, CompletionsArgs};

/// Every generated file, as (what makes it, path from the repository root).
pub const GENERATED: &[(CompletionTarget, &str)] = &[
    (CompletionTarget::Bash, "completions/pv3.bash"),
    (CompletionTarget::Zsh, "completions/_pv3"),
    (CompletionTarget::Fish, "completions/pv3.fish"),
    (CompletionTarget::Elvish, "completions/pv3.elv"),
    (CompletionTarget::Powershell, "completions/_pv3.ps1"),
    (CompletionTarget::Man, "docs/pv3.1"),
];

/// `pv3 completions`: writes the script or the man page to stdout.
pub fn run(args: CompletionsArgs) -> Result<()> {
    let text = render(args.shell)?;
    crate::output::print_stdout(&text)
}

/// The completion script for `target`, or the man page for
/// [`CompletionTarget::Man`].
fn render(target: CompletionTarget) -> Result<Vec<u8>> {
    let shell = match target {
        CompletionTarget::Bash => Shell::Bash,
        CompletionTarget::Zsh => Shell::Zsh,
        CompletionTarget::Fish => Shell::Fish,
        CompletionTarget::Elvish => Shell::Elvish,
        CompletionTarget::Powershell => Shell::PowerShell,
        CompletionTarget::Man => return man_page(),
    };
    let mut cmd = command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pv3", &mut buf);
    Ok(buf)
}

/// The clap definition with every environment value hidden, so that what
/// is generated does not depend on the environment it is generated in.
fn command() -> clap::Command {
    hide_env_values(Cli::command())
}

fn hide_env_values(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|a: Arg| a.hide_env_values(true));
    cmd.mut_subcommands(hide_env_values)
}

/// One man page, `pv3(1)`, with a section per command (its synopsis,
/// options and examples), then exit status, environment and files.
fn man_page() -> Result<Vec<u8>> {
    let mut root = command();
    root.build();
    let man = clap_mangen::Man::new(root.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    writeln!(
        out,
        "Each command below lists its options; connection options also read the environment variables listed under ENVIRONMENT."
    )?;
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        // The global options are listed once, above.
        let sub = sub.clone().mut_args(|a: Arg| {
            let builtin = matches!(a.get_id().as_str(), "help" | "version");
            if a.is_global_set() || builtin {
                a.hide(true)
            } else {
                a
            }
        });
        let sub_man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        sub_man.render_description_section(&mut part)?;
        sub_man.render_synopsis_section(&mut part)?;
        sub_man.render_options_section(&mut part)?;
        if sub.get_after_help().is_some() {
            sub_man.render_extra_section(&mut part)?;
        }
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        out.extend_from_slice(&rework_sections(&part, true));
    }
    if root.get_after_help().is_some() {
        let mut part = Vec::new();
        man.render_extra_section(&mut part)?;
        out.extend_from_slice(&rework_sections(&part, false));
    }
    out.extend_from_slice(FIXED_SECTIONS.as_bytes());
    write_environment(&mut out, &root)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// With `nest`, `.SH X` → `.SS X` so that a command's parts sit under its
/// own heading, and its DESCRIPTION heading goes (the text stays, right
/// under the command's name). EXTRA, clap_mangen's name for `after_help`,
/// becomes EXAMPLES (which is what every after_help here holds), printed as
/// written rather than filled.
fn rework_sections(roff: &[u8], nest: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::with_capacity(text.len());
    let mut in_examples = false;
    let level = if nest { ".SS" } else { ".SH" };
    for line in text.lines() {
        let heading = line.strip_prefix(".SH ");
        if heading.is_some() && in_examples {
            out.push_str(".fi\n");
            in_examples = false;
        }
        match heading {
            Some("EXTRA") => {
                out.push_str(level);
                out.push_str(" EXAMPLES\n.nf");
                in_examples = true;
            }
            Some("DESCRIPTION") if nest => continue,
            Some(heading) => {
                out.push_str(level);
                out.push(' ');
                out.push_str(heading);
            }
            None if in_examples && line == "Examples:" => continue,
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if in_examples {
        out.push_str(".fi\n");
    }
    out.into_bytes()
}

const FIXED_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
The work failed: an API check failed, a replay could not deliver everything.
.TP
\fB2\fR
Bad usage or configuration.
.SH FILES
.TP
\fI/etc/systemd/system/pv3\-collector.service\fR
The unit \fBpv3 install\-service\fR writes (\fI~/.config/systemd/user/\fR with \fB\-\-user\fR).
.TP
\fI/etc/pv3/collector.env\fR
The collector's connection settings, secrets included (mode 0600; \fI~/.config/pv3/collector.env\fR with \fB\-\-user\fR).
.TP
\fI$STATE_DIRECTORY/status.json\fR
What a running collector says about itself (\fI/var/lib/pv3\fR under systemd, else \fI~/.local/state/pv3\fR); \fBpv3 check\-api\fR reads it.
"#;

/// ENVIRONMENT: every variable an option reads, with the options and the
/// commands that take it.
fn write_environment(out: &mut Vec<u8>, root: &clap::Command) -> Result<()> {
    let mut vars: Vec<(String, String, Vec<String>)> = Vec::new();
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = env.to_string_lossy().into_owned();
            let flag = format!("--{long}");
            match vars.iter_mut().find(|(e, f, _)| *e == env && *f == flag) {
                Some((_, _, cmds)) => cmds.push(sub.get_name().to_owned()),
                None => vars.push((env, flag, vec![sub.get_name().to_owned()])),
            }
        }
    }
    vars.sort();
    writeln!(out, ".SH ENVIRONMENT")?;
    writeln!(
        out,
        "An option given on the command line wins over its variable. \\fBRUST_LOG\\fR sets log filters (see \\fB\\-v\\fR)."
    )?;
    for (env, flag, cmds) in vars {
        writeln!(out, ".TP")?;
        writeln!(out, "\\fB{env}\\fR")?;
        writeln!(
            out,
            "\\fB{}\\fR of {}",
            flag.replace('-', "\\-"),
            cmds.join(", ").replace('-', "\\-")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_renders() {
        for (target, _) in GENERATED {
            let text = render(*target).expect("render");
            assert!(text.len() > 1000, "{target:?} is suspiciously short");
            assert!(
                String::from_utf8_lossy(&text).contains("check-api")
                    || String::from_utf8_lossy(&text).contains("check\\-api"),
                "{target:?} lacks check-api"
            );
        }
    }

    #[test]
    fn headings_are_nested_and_examples_kept_as_written() {
        let out = rework_sections(
            b".SH DESCRIPTION\nText\n.SH OPTIONS\n.TP\n.SH \"MQTT\"\n.SH EXTRA\nExamples:\n  pv3 x\n",
            true,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Text\n.SS OPTIONS\n.TP\n.SS \"MQTT\"\n.SS EXAMPLES\n.nf\n  pv3 x\n.fi\n"
        );
    }
}
