//! `events schema check|export` on folders of schema snapshots: the
//! shop's, copied and changed the way a payload type's change would change
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{assert_one_line_failure, run, stdout};

/// The shop's committed snapshots.
fn shop_contracts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/shop/contracts")
}

/// A private copy of the shop's snapshots, removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn of_shop(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("events-cli-schema-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for entry in std::fs::read_dir(shop_contracts()).unwrap() {
            let entry = entry.unwrap();
            let to = dir.join(entry.file_name());
            std::fs::create_dir_all(&to).unwrap();
            for file in std::fs::read_dir(entry.path()).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
            }
        }
        Copy(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn placed(&self) -> PathBuf {
        self.0.join("orders.order_placed/v1.schema.json")
    }

    /// Changes `orders.order_placed` v1's schema.
    fn edit_placed(&self, edit: impl FnOnce(&mut Value)) {
        let mut schema: Value =
            serde_json::from_str(&std::fs::read_to_string(self.placed()).unwrap()).unwrap();
        edit(&mut schema);
        std::fs::write(
            self.placed(),
            serde_json::to_string_pretty(&schema).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts the command succeeded, and gives its stdout.
fn succeeded(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stdout(output)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `events schema check --old <shop> --new <new>`.
async fn check(new: &str) -> std::process::Output {
    let old = shop_contracts();
    run(
        "nats://127.0.0.1:1",
        &[
            "schema",
            "check",
            "--old",
            old.to_str().unwrap(),
            "--new",
            new,
        ],
    )
    .await
}

/// Asserts the check failed (exit 1, one line) naming `field` of
/// orders.order_placed v1, and printed the change with why.
fn assert_breaking(output: &std::process::Output, field: &str, why: &str) {
    let args = ["schema", "check"];
    assert_one_line_failure(output, &args);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
    let (out, err) = (stdout(output), stderr(output));
    assert!(
        err.contains("orders.order_placed v1 changed incompatibly") && err.contains(field),
        "{err}"
    );
    assert!(
        out.contains("orders.order_placed v1: changed incompatibly without a VERSION bump"),
        "{out}"
    );
    assert!(out.contains(&format!("  {field}: {why}")), "{out}");
}

#[tokio::test]
async fn schema_check_passes_on_identical_folders_and_on_an_additive_change() {
    let same = Copy::of_shop("same");
    let output = check(same.path()).await;
    let out = succeeded(&output);
    assert_eq!(out.matches(": unchanged").count(), 4, "{out}");
    assert!(out.ends_with("4 checked, 0 failed, 0 removed\n"), "{out}");

    let additive = Copy::of_shop("additive");
    additive.edit_placed(|s| {
        s["properties"]["note"] = json!({ "type": ["string", "null"] });
    });
    let output = check(additive.path()).await;
    let out = succeeded(&output);
    assert!(
        out.contains("orders.order_placed v1: changed compatibly\n  $.note: "),
        "{out}"
    );
    assert!(out.contains("(compatible)"), "{out}");
}

#[tokio::test]
async fn schema_check_fails_naming_a_removed_renamed_or_retyped_field() {
    let removed = Copy::of_shop("removed");
    removed.edit_placed(|s| {
        s["properties"].as_object_mut().unwrap().remove("quantity");
        s["required"] = json!(["order_id", "sku"]);
    });
    assert_breaking(
        &check(removed.path()).await,
        "$.quantity",
        "required field removed",
    );

    let renamed = Copy::of_shop("renamed");
    renamed.edit_placed(|s| {
        let sku = s["properties"]
            .as_object_mut()
            .unwrap()
            .remove("sku")
            .unwrap();
        s["properties"]["product"] = sku;
        s["required"] = json!(["order_id", "product", "quantity"]);
    });
    let output = check(renamed.path()).await;
    assert_breaking(
        &output,
        "$.sku",
        "required field removed (renamed to `product`?)",
    );
    assert!(stdout(&output).contains("  $.product: required field added"));

    let retyped = Copy::of_shop("retyped");
    retyped.edit_placed(|s| s["properties"]["quantity"] = json!({ "type": "string" }));
    assert_breaking(
        &check(retyped.path()).await,
        "$.quantity",
        "type changed from integer to string",
    );
}

#[tokio::test]
async fn schema_check_fails_when_an_optional_field_is_made_required() {
    // The old side has an optional field the new side requires.
    let old = Copy::of_shop("optional-old");
    old.edit_placed(|s| s["properties"]["note"] = json!({ "type": "string" }));
    let new = Copy::of_shop("optional-new");
    new.edit_placed(|s| {
        s["properties"]["note"] = json!({ "type": "string" });
        s["required"] = json!(["order_id", "sku", "quantity", "note"]);
    });
    let output = run(
        "nats://127.0.0.1:1",
        &["schema", "check", "--old", old.path(), "--new", new.path()],
    )
    .await;
    assert_breaking(&output, "$.note", "optional field made required");
}

#[tokio::test]
async fn schema_check_reports_a_removed_version_and_fails_a_version_that_went_back() {
    let bumped = Copy::of_shop("bumped");
    std::fs::copy(
        bumped.placed(),
        bumped.0.join("orders.order_placed/v2.schema.json"),
    )
    .unwrap();
    // v2 only: v1 is reported removed, and passes.
    let v2_only = Copy::of_shop("v2-only");
    std::fs::rename(
        v2_only.placed(),
        v2_only.0.join("orders.order_placed/v2.schema.json"),
    )
    .unwrap();
    let output = check_between(&bumped, &v2_only).await;
    let out = succeeded(&output);
    assert!(
        out.contains("orders.order_placed v1: version removed (no snapshot in --new)"),
        "{out}"
    );
    assert!(out.ends_with("4 checked, 0 failed, 1 removed\n"), "{out}");

    // Back to v1 after v2: fails.
    let output = check_between(&bumped, &Copy::of_shop("back")).await;
    assert_one_line_failure(&output, &["schema", "check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("orders.order_placed went back to v1 after v2"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).contains("orders.order_placed v2: version removed"));
}

async fn check_between(old: &Copy, new: &Copy) -> std::process::Output {
    run(
        "nats://127.0.0.1:1",
        &["schema", "check", "--old", old.path(), "--new", new.path()],
    )
    .await
}

#[tokio::test]
async fn schema_check_reads_a_folder_at_a_git_revision() {
    let repo = Copy::of_shop("git");
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .current_dir(&repo.0)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {}", stderr(&output));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "published"]);
    repo.edit_placed(|s| s["properties"]["quantity"] = json!({ "type": "string" }));

    // Run from inside the repository: REV:DIR is git's own syntax.
    let check_in_repo = |old: &'static str, new: &'static str| {
        super::command(
            "nats://127.0.0.1:1",
            &["schema", "check", "--old", old, "--new", new],
        )
        .current_dir(&repo.0)
        .output()
    };
    let output = check_in_repo("HEAD:", ".").await.unwrap();
    assert_breaking(&output, "$.quantity", "type changed from integer to string");

    let output = check_in_repo("HEAD:", "HEAD:").await.unwrap();
    assert_eq!(succeeded(&output).matches(": unchanged").count(), 4);
}

#[tokio::test]
async fn schema_commands_refuse_bad_input_in_one_line_with_exit_2() {
    let invalid = Copy::of_shop("invalid");
    std::fs::write(invalid.placed(), "{ \"type\": ").unwrap();
    let missing = std::env::temp_dir().join("events-cli-schema-no-such-folder");
    let missing = missing.to_str().unwrap();
    let shop = shop_contracts();
    let shop = shop.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["schema", "check", "--old", missing, "--new", shop],
            "no such folder",
        ),
        (
            &["schema", "check", "--old", shop, "--new", invalid.path()],
            "is not JSON",
        ),
        (
            &["schema", "check", "--old", "no-such-rev:x", "--new", shop],
            "not a git REV:DIR",
        ),
        (
            &["schema", "export", "--snapshots", missing],
            "no such folder",
        ),
        (
            &["schema", "export", "--snapshots", invalid.path()],
            "is not JSON",
        ),
        (
            &[
                "schema",
                "export",
                "--snapshots",
                shop,
                "--prefix",
                "bad prefix",
            ],
            "prefix",
        ),
    ];
    for (args, expected) in cases {
        let output = run("nats://127.0.0.1:1", args).await;
        assert_one_line_failure(&output, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn schema_export_writes_an_asyncapi_document_the_official_parser_accepts() {
    let shop = shop_contracts();
    let args = [
        "schema",
        "export",
        "--snapshots",
        shop.to_str().unwrap(),
        "--prefix",
        "shop",
        "--server",
        "nats://user:secret@nats.internal:4222",
    ];
    let output = run("nats://127.0.0.1:1", &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(!text.contains("secret"), "credentials left in the document");
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["asyncapi"], "3.0.0");
    let channels = document["channels"].as_object().unwrap();
    let ids: Vec<&String> = channels.keys().collect();
    assert_eq!(
        ids,
        [
            "inventory.out_of_stock.v1",
            "inventory.stock_reserved.v1",
            "orders.order_placed.v1",
            "orders.order_settled.v1"
        ]
    );
    assert_eq!(
        channels["orders.order_placed.v1"]["address"],
        "shop.orders.order_placed"
    );
    assert_eq!(document["servers"]["default"]["host"], "nats.internal:4222");
    // The binary message's payload is the snapshot, through a reference.
    let payload = &channels["orders.order_placed.v1"]["messages"]["binary"]["payload"]["$ref"];
    let name = payload.as_str().unwrap().rsplit('/').next().unwrap();
    let placed: Value = serde_json::from_str(
        &std::fs::read_to_string(shop.join("orders.order_placed/v1.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        document["components"]["schemas"][name]["required"],
        placed["required"]
    );

    if Command::new("node").arg("--version").output().is_err() {
        println!("SKIPPED the parser: node is not installed (scripts/test.sh installs it)");
        return;
    }
    let file = std::env::temp_dir().join(format!("events-cli-export-{}.json", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/asyncapi-validate.sh");
    let parsed = Command::new(&script)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    let said = format!("{}{}", stdout(&parsed), stderr(&parsed));
    assert!(
        parsed.status.success(),
        "the parser refused the document:\n{said}"
    );
    assert!(
        said.contains("valid AsyncAPI 3.0.0 (0 errors, 0 warnings)"),
        "{said}"
    );
}

#[tokio::test]
async fn schema_export_bundles_the_json_schemas_with_their_subschemas() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/events/tests/fixtures");
    let args = [
        "schema",
        "export",
        "--snapshots",
        fixtures.to_str().unwrap(),
        "--format",
        "json-schema",
    ];
    let output = run("nats://127.0.0.1:1", &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let bundle: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(bundle["$schema"], "http://json-schema.org/draft-07/schema#");
    for version in [1, 2] {
        let file = fixtures.join(format!("orders.order_placed/v{version}.schema.json"));
        let mut schema: Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        schema.as_object_mut().unwrap().remove("$schema");
        assert_eq!(
            bundle["definitions"][format!("orders.order_placed.v{version}")],
            schema
        );
    }
}
