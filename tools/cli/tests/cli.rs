//! The `hallmark` command's arguments: help on every command, and clear refusals.

use std::process::Output;

use testkit::process::binary;

fn hallmark(args: &[&str]) -> Output {
    std::process::Command::new(binary("hallmark"))
        .args(args)
        .env_remove("HALLMARK_SHOP_URL")
        .output()
        .expect("the hallmark command runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_command_has_help() {
    let help = hallmark(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["demo", "place", "show", "dlq", "limits"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    for command in [
        &["place", "--help"][..],
        &["dlq", "replay", "--help"],
        &["limits", "set", "--help"],
    ] {
        let help = hallmark(command);
        assert!(help.status.success(), "{command:?}: {}", stderr(&help));
    }
    let place = String::from_utf8_lossy(&hallmark(&["place", "--help"]).stdout).into_owned();
    assert!(
        place.contains("--model") && place.contains("HALLMARK_SHOP_URL"),
        "{place}"
    );
}

#[test]
fn unknown_flags_missing_arguments_and_malformed_ids_are_refused() {
    let unknown = hallmark(&["place", "--model", "ring.stl", "--colour", "red"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("unexpected argument '--colour'"),
        "{}",
        stderr(&unknown)
    );

    let missing = hallmark(&["place"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--model"), "{}", stderr(&missing));

    let malformed = hallmark(&["show", "12345"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains("invalid value '12345'"),
        "{}",
        stderr(&malformed)
    );

    let nothing = hallmark(&[]);
    assert_eq!(nothing.status.code(), Some(2));
}

#[test]
fn a_model_that_cannot_be_read_is_an_error_that_names_it() {
    let output = hallmark(&[
        "place",
        "--model",
        "/nonexistent/ring.stl",
        "--shop",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/ring.stl"),
        "{}",
        stderr(&output)
    );
}
