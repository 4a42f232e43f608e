//! The README's configuration table is checked against the server's real settings, so that a
//! new flag, a renamed environment variable or a changed default cannot leave the table stale.

use clap::CommandFactory;

#[derive(clap::Parser)]
struct Settings {
    #[command(flatten)]
    config: streamhub::Config,
}

#[test]
fn the_readme_configuration_table_lists_every_setting_with_its_env_and_default() {
    let readme = include_str!("../README.md");
    let command = Settings::command();
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let default = match arg.get_default_values() {
            [] if matches!(arg.get_action(), clap::ArgAction::SetTrue) => "off".to_string(),
            [] => "—".to_string(),
            values => values
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
        };
        let row = format!("| `--{long}` | `{env}` | `{default}` |");
        // A setting without a default shows a bare dash, not a code span.
        let listed = readme.contains(&row)
            || (default == "—" && readme.contains(&format!("| `--{long}` | `{env}` | — |")));
        if !listed {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's configuration table lacks these rows (or has them stale):\n{}",
        missing.join("\n")
    );
}
