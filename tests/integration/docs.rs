//! The committed documentation: man pages (man/) are generated from each tool's clap
//! definition, so `--help` and the man page cannot drift apart; the shell completions
//! (completions/) ask the tool itself at each completion. The test below regenerates them in memory and fails when a committed
//! file differs; with FORMIC_UPDATE_DOCS=1 (what scripts/gen-docs sets) it writes them instead.
//!
//! man/ and completions/ hold only generated files: a file there that no tool generates is
//! reported as stale, and removed when updating.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::env::EnvCompleter;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// Every tool, by binary name, with its command line. A new tool is one more line here.
fn tools() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("offer", formic::offer::Cli::command()),
        ("pack", formic::pack::Cli::command()),
        ("launch", formic::launch::Cli::command()),
        ("formic-supervise", formic::supervise::Cli::command()),
        ("reap", formic::reap::Cli::command()),
        ("announce", formic::announce::Cli::command()),
        ("roll", formic::roll::Cli::command()),
        ("job", formic::job::tool::Cli::command()),
        ("formic-host", formic::transport::serve::Cli::command()),
    ]
}

/// The shells completed, and the file each one's script goes in.
const SHELLS: [(&dyn EnvCompleter, &str); 3] = [
    (&clap_complete::env::Bash, "NAME.bash"),
    (&clap_complete::env::Zsh, "_NAME"),
    (&clap_complete::env::Fish, "NAME.fish"),
];

/// The directories whose every file is generated.
const GENERATED_DIRS: [&str; 2] = ["man", "completions"];

/// One generated file: its path from the repository root, and its contents.
struct Doc {
    path: String,
    bytes: Vec<u8>,
}

/// Everything that scripts/gen-docs writes, in a stable order.
fn generate() -> Vec<Doc> {
    let tools = tools();
    let names: Vec<&str> = tools.iter().map(|(name, _)| *name).collect();
    let mut docs = Vec::new();
    for (name, cmd) in tools {
        assert_eq!(
            cmd.get_name(),
            name,
            "tools(): {name} is paired with the command line of {}",
            cmd.get_name()
        );
        let see_also = names
            .iter()
            .filter(|&&other| other != name)
            .map(|other| format!("{other}(1)"))
            .collect();
        // `offer help add` is a command but needs no page of its own.
        let mut built = cmd.clone().disable_help_subcommand(true);
        built.build();
        man_pages(&built, see_also, &mut docs);
        // The shell calls the tool back for each completion (`formic::complete`): its
        // flags and subcommands, and the hosts, jobs and tasks of the state.
        for (shell, file) in SHELLS {
            let mut bytes = Vec::new();
            shell
                .write_registration(formic::complete::VAR, name, name, name, &mut bytes)
                .unwrap();
            docs.push(Doc {
                path: format!("completions/{}", file.replace("NAME", name)),
                bytes,
            });
        }
    }
    docs
}

/// The page of `cmd` (built) and of each of its subcommands: `offer.1`, `offer-add.1`, ….
fn man_pages(cmd: &clap::Command, see_also: Vec<String>, docs: &mut Vec<Doc>) {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    docs.push(Doc {
        path: format!("man/{name}.1"),
        bytes: man_page(cmd, &see_also),
    });
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, vec![format!("{name}(1)")], docs);
    }
}

/// clap_mangen's page without its "EXTRA" section (it would run the exit-status table
/// together into one paragraph, and subcommands do not inherit `after_help`), followed by
/// EXIT STATUS, VERSION and SEE ALSO.
fn man_page(cmd: &clap::Command, see_also: &[String]) -> Vec<u8> {
    let version = cmd.get_version().map(str::to_string);
    let cmd = cmd
        .clone()
        .after_help(None)
        .after_long_help(None)
        .version(None);
    let mut page = Vec::new();
    Man::new(cmd)
        .source(format!("formic {}", env!("CARGO_PKG_VERSION")))
        .manual("formic")
        .render(&mut page)
        .expect("rendering to memory");

    let mut roff = Roff::default();
    roff.control("SH", ["EXIT STATUS"]);
    exit_status(&mut roff);
    if let Some(v) = version {
        roff.control("SH", ["VERSION"]);
        roff.text([roman(format!("v{v}"))]);
    }
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(see_also.join(", "))]);
    }
    // `to_roff` leaves out the preamble the page above already has.
    page.extend_from_slice(roff.to_roff().as_bytes());
    page
}

/// formic::exit::TABLE as a tagged list: `  65  bad input …` becomes a bold 65 with its
/// meaning; lines that are not a row become paragraphs.
fn exit_status(roff: &mut Roff) {
    for line in table_lines() {
        match table_row(line) {
            Some((code, meaning)) => {
                roff.control("TP", []);
                roff.text([bold(code)]);
                roff.text([roman(meaning)]);
            }
            None => {
                roff.control("PP", []);
                roff.text([roman(line.trim())]);
            }
        }
    }
}

/// The lines of formic::exit::TABLE under its "Exit status:" heading (the section's title
/// in a man page).
fn table_lines() -> impl Iterator<Item = &'static str> {
    let mut lines = formic::exit::TABLE.lines().peekable();
    lines.next_if(|l| !l.starts_with(char::is_whitespace) && l.ends_with(':'));
    lines
}

/// `  74  I/O error …` → ("74", "I/O error …").
fn table_row(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix(char::is_whitespace)?.trim_start();
    let (code, meaning) = line.split_once(char::is_whitespace)?;
    code.parse::<u8>().ok()?;
    Some((code, meaning.trim()))
}

#[test]
fn committed_docs_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("FORMIC_UPDATE_DOCS").is_some_and(|v| v == "1");
    let docs = generate();
    let mut problems = Vec::new();
    for doc in &docs {
        let path = root.join(&doc.path);
        let problem = match std::fs::read(&path) {
            Ok(bytes) if bytes == doc.bytes => continue,
            Ok(_) => "is stale",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        if update {
            write_file(&path, &doc.bytes);
            eprintln!("wrote {}", doc.path);
        } else {
            problems.push(format!("{} {problem}; run scripts/gen-docs", doc.path));
        }
    }
    for dir in GENERATED_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if docs.iter().any(|d| d.path == rel) {
                continue;
            }
            if update {
                std::fs::remove_file(entry.path()).unwrap();
                eprintln!("removed {rel}");
            } else {
                problems.push(format!(
                    "{rel} is not generated by any tool; run scripts/gen-docs to remove it"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Write then rename, so a concurrent reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8]) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every man page has an EXIT STATUS section that reads, once typeset, as the table that
/// `--help` prints: each status with its meaning, and the closing note.
#[test]
fn every_man_page_has_the_exit_status_table() {
    let docs = generate();
    let pages: Vec<&Doc> = docs.iter().filter(|d| d.path.starts_with("man/")).collect();
    assert!(
        pages.iter().any(|d| d.path == "man/offer.1"),
        "no man/offer.1 among {:?}",
        pages.iter().map(|d| &d.path).collect::<Vec<_>>()
    );
    assert!(pages.iter().any(|d| d.path == "man/offer-add.1"));
    // The statuses DESIGN.md promises; a table that loses one is a broken promise.
    let promised = ["0", "1", "2", "65", "69", "70", "74", "75", "77"];
    for page in pages {
        let text = String::from_utf8(page.bytes.clone()).unwrap();
        let section = text
            .split_once(".SH \"EXIT STATUS\"\n")
            .unwrap_or_else(|| panic!("{} has no EXIT STATUS section", page.path))
            .1;
        let section = section.split("\n.SH ").next().unwrap();
        let typeset = plain_text(section);
        let mut codes = Vec::new();
        for line in table_lines() {
            let expected = line.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                typeset.contains(&expected),
                "{}: EXIT STATUS lacks {expected:?}; it reads:\n{typeset}",
                page.path
            );
            if let Some(code) = line
                .split_whitespace()
                .next()
                .filter(|c| c.parse::<u8>().is_ok())
            {
                codes.push(code);
            }
        }
        assert_eq!(codes, promised, "{}: exit statuses", page.path);
    }
}

/// Roughly what a reader sees of a roff fragment: text lines without font escapes, joined.
fn plain_text(roff: &str) -> String {
    let words: Vec<&str> = roff.lines().filter(|l| !l.starts_with('.')).collect();
    let text = words
        .join(" ")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\-", "-")
        .replace("\\&", "")
        .replace("\\\\", "\\");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// README's exit-status table is the one the tools print.
#[test]
fn readme_has_the_exit_status_table() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("reading README.md");
    assert!(
        readme.contains(&format!("```\n{}\n```", formic::exit::TABLE)),
        "README.md's exit-status table differs from formic::exit::TABLE (lib/exit.rs)"
    );
}

/// README's set-up commands (its first code block) are scripts in the repository that a
/// fresh clone can run.
#[test]
fn readme_setup_commands_exist() {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("reading README.md");
    let block = readme
        .split("```")
        .nth(1)
        .expect("README.md has no code block");
    let commands: Vec<&str> = block
        .lines()
        .skip(1) // the fence's language tag
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["scripts/demo", "scripts/test"]);
    for command in commands {
        let mode = std::fs::metadata(root.join(command))
            .unwrap_or_else(|e| panic!("README.md runs {command}: {e}"))
            .permissions()
            .mode();
        assert!(
            mode & 0o111 != 0,
            "README.md runs {command}, which is not executable"
        );
    }
}

/// The job specs people copy first — the README's example and the demo's jobs — are
/// specs pack accepts (`pack --check`): the demo once broke on a health timeout the
/// typed spec refuses.
#[test]
fn the_readme_and_demo_job_specs_pass_pack_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = crate::common::tempdir();
    let mut files = Vec::new();
    // The demo's jobs: each `cat >"$demo/jobs/NAME" <<'JOB'` ... `JOB`.
    let demo = std::fs::read_to_string(root.join("scripts/demo")).unwrap();
    let mut lines = demo.lines();
    while let Some(line) = lines.next() {
        if line.contains("/jobs/") && line.ends_with("<<'JOB'") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "JOB").collect();
            let file = dir.path().join(format!("demo-{}.json", files.len()));
            std::fs::write(&file, body.join("\n")).unwrap();
            files.push(file);
        }
    }
    assert!(files.len() >= 2, "the demo's jobs were found");
    // The README's example: the ```json block of "The job spec".
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("### The job spec").unwrap()..];
    let block = &section[section.find("```json\n").unwrap() + 8..];
    let block = &block[..block.find("```").unwrap()];
    let file = dir.path().join("readme.json");
    std::fs::write(&file, block).unwrap();
    files.push(file);
    let out = crate::common::run(
        std::process::Command::new(crate::common::bin("pack"))
            .arg("--check")
            .args(&files),
        b"",
    );
    assert_eq!(
        crate::common::code(&out),
        0,
        "{}",
        crate::common::stderr(&out)
    );
}

/// What the committed bash completion of `tool` offers for the last of `words`, run by bash
/// with this build's tools on its PATH and the state at `state`.
fn bash_completes(tool: &str, state: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source {repo}/completions/{tool}.bash\n\
         COMP_WORDS=({words}); COMP_CWORD={last}; COMP_TYPE=9\n\
         _clap_complete_{tool} {tool} {current} {previous}\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        repo = env!("CARGO_MANIFEST_DIR"),
        words = quoted.join(" "),
        last = words.len() - 1,
        current = quoted[words.len() - 1],
        previous = quoted[words.len() - 2],
    );
    let bin = crate::common::bin(tool);
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = crate::common::run(
        std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .env("FORMIC_STATE", state),
        b"",
    );
    assert_eq!(
        crate::common::code(&out),
        0,
        "{}",
        crate::common::stderr(&out)
    );
    crate::common::stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn the_shell_completes_host_names_job_keys_and_task_ids_from_the_state() {
    use crate::pack_cli::{build_state, running};
    let dir = crate::common::tempdir();
    let state = dir.path().join("state");
    build_state(
        &state,
        &[("h1", &[]), ("h2", &[]), ("g1", &[])],
        &[
            running("www/prod/web", 0, "h1", 100),
            running("www/prod/web", 1, "h2", 100),
            running("batch/x/y", 0, "g1", 100),
        ],
    );
    assert_eq!(
        bash_completes("offer", &state, &["offer", "drain", "h"]),
        ["h1", "h2"]
    );
    assert_eq!(
        bash_completes("reap", &state, &["reap", "kill", "--host", "g"]),
        ["g1"]
    );
    assert_eq!(
        bash_completes("job", &state, &["job", "logs", "www/prod/web/"]),
        ["www/prod/web/0", "www/prod/web/1"]
    );
    assert_eq!(
        bash_completes("roll", &state, &["roll", "pause", "w"]),
        ["www/prod/web"]
    );
    assert_eq!(
        bash_completes("job", &state, &["job", "history", "b"]),
        ["batch/x/y", "batch/x/y/0"]
    );
    // Flags and subcommands still complete, from the tool's own command line.
    let verbs = bash_completes("job", &state, &["job", "l"]);
    assert_eq!(verbs, ["logs"]);
}
