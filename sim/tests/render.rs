//! `echo-sim trace render`: the self-contained HTML page an auditor opens.
//!
//! Unit checks on the generated page (header, every lane, fault markers, hostile text escaped)
//! and a headless Chromium run that renders a real trace filtered to one intent
//! (`#filter=<intent>`), takes a screenshot and reads the DOM back. Chromium is required:
//! without `/usr/bin/chromium` the browser tests fail (`.ci/test` installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use echo_sim::render::render_html;
use echo_sim::run::{run_seed, RunOptions};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

// ---- helpers ----------------------------------------------------------------------------

fn trace_of(seed: u64) -> String {
    run_seed(seed, &RunOptions::default(), Some("test"))
        .trace
        .expect("run_seed records a trace when given a commit")
}

fn lines(trace: &str) -> Vec<Value> {
    trace
        .lines()
        .map(|l| serde_json::from_str(l).expect("trace line is JSON"))
        .collect()
}

fn kind(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

/// The JSON the page embeds.
fn embedded(html: &str) -> Value {
    let open = "<script type=\"application/json\" id=\"trace-data\">";
    let start = html.find(open).expect("embedded data") + open.len();
    let len = html[start..]
        .find("</script>")
        .expect("end of embedded data");
    serde_json::from_str(&html[start..start + len]).expect("embedded data is JSON")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `m0-i17` occurs in `text` as a whole id (`m0-i17@slave-1`, `"m0-i17"`, not `m0-i170`).
fn names_id(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + id.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// A seed of the default profile whose trace has a fault naming one of master-0's deliveries
/// (`pipe_write_fail Slave(1) m0-i17@slave-1`, `broker_reject …`): that intent's journey shows
/// the core, an agent, a slave and the fault.
fn journey_with_fault() -> (u64, String, String) {
    for seed in [7u64, 26, 520].into_iter().chain(0..60) {
        let trace = trace_of(seed);
        for v in lines(&trace).iter().filter(|v| kind(v) == "fault") {
            let detail = v["detail"].as_str().unwrap_or("");
            let Some(cmd) = detail
                .split(' ')
                .find(|t| t.starts_with("m0-i") && t.contains('@'))
            else {
                continue;
            };
            let intent = cmd.split('@').next().unwrap().to_string();
            return (seed, trace, intent);
        }
    }
    panic!("no seed in the budget has a fault naming a master-0 delivery");
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory (removed when dropped).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("echo-render-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the trace-render browser test needs headless Chromium. \
         Install it with `apt-get install -y chromium` (Debian's package; `.ci/test` installs it)."
    );
}

/// Runs headless Chromium on `url` with `extra` flags; stdout goes to the returned string.
fn chromium(dir: &Path, url: &str, extra: &[String]) -> String {
    let profile = dir.join(format!("profile-{}", DIRS.fetch_add(1, Ordering::SeqCst)));
    let out_path = dir.join(format!("stdout-{}", DIRS.fetch_add(1, Ordering::SeqCst)));
    let err_path = dir.join(format!("stderr-{}", DIRS.fetch_add(1, Ordering::SeqCst)));
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1600,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path).expect("stdout file"))
    .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {url}:\n{stderr}"
    );
    std::fs::read_to_string(&out_path).expect("chromium stdout")
}

fn file_url(p: &Path, fragment: &str) -> String {
    format!("file://{}{fragment}", p.display())
}

/// The rows of the events table, each as (attributes of the `<tr>`, its inner HTML).
fn table_rows(dom: &str) -> Vec<(String, String)> {
    let start = dom.find("<tbody id=\"rows\">").expect("events table body");
    let body = &dom[start..start + dom[start..].find("</tbody>").expect("end of tbody")];
    body.split("<tr ")
        .skip(1)
        .map(|r| {
            let end = r.find('>').unwrap_or(0);
            (r[..end].to_string(), r[end..].to_string())
        })
        .collect()
}

fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let i = attrs.find(&key)? + key.len();
    Some(&attrs[i..i + attrs[i..].find('"')?])
}

fn assert_page_ran(dom: &str, what: &str) {
    assert!(
        dom.contains("data-ready=\"1\""),
        "{what}: the page script did not finish:\n{}",
        &dom[..dom.len().min(3000)]
    );
    assert!(
        dom.contains("<div id=\"errors\" hidden=\"\"></div>"),
        "{what}: the page reported a script error: {}",
        dom.split("<div id=\"errors\"")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take(600)
            .collect::<String>()
    );
}

// ---- the page, unit-level ---------------------------------------------------------------

#[test]
fn page_carries_header_every_lane_faults_and_messages() {
    let (seed, trace, _) = journey_with_fault();
    let html = render_html(&trace).expect("a real trace renders");
    let ls = lines(&trace);
    let header = &ls[0];

    // Self-contained: nothing is fetched.
    for remote in ["http://", "https://", "src=\"", "<link", "@import"] {
        let hits: Vec<_> = html
            .match_indices(remote)
            .filter(|(i, _)| !html[*i..].starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(hits.is_empty(), "the page references {remote:?}");
    }

    // Header: seed, commit, profile, in the markup (escaped) and in the data.
    assert!(html.contains(&format!("<title>Echo trace — seed {seed}</title>")));
    assert!(html.contains(&format!("<b>seed</b> {seed}</span>")));
    assert!(html.contains("<b>commit</b> test</span>"));
    let profile = header["profile"].as_str().expect("profile");
    assert!(
        html.contains(&html_escape(profile)),
        "profile in the header"
    );
    let data = embedded(&html);
    assert_eq!(data["header"], *header, "the header is embedded as is");

    // Every node of the trace is a lane; the core first, each agent before its EAs.
    let nodes: BTreeSet<&str> = ls
        .iter()
        .filter(|v| kind(v) == "step")
        .map(|v| v["node"].as_str().unwrap())
        .collect();
    let lanes: Vec<&str> = data["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(lanes.iter().copied().collect::<BTreeSet<_>>(), nodes);
    assert_eq!(lanes.len(), nodes.len(), "no lane twice");
    assert_eq!(lanes[0], "core");
    assert!(lanes[1].starts_with("agent-"), "lanes: {lanes:?}");
    for n in ["master-0", "master-1", "slave-0", "slave-9", "agent-1"] {
        assert!(lanes.contains(&n), "lane {n} missing: {lanes:?}");
    }

    // Every step, fault and violation is in the data; faults keep kind and detail.
    let strs: Vec<&str> = data["strs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let count = |k: &str| ls.iter().filter(|v| kind(v) == k).count();
    assert_eq!(data["steps"].as_array().unwrap().len(), count("step"));
    assert_eq!(data["viols"].as_array().unwrap().len(), count("violation"));
    let faults = data["faults"].as_array().unwrap();
    assert!(!faults.is_empty(), "seed {seed} has faults");
    assert_eq!(faults.len(), count("fault"));
    for (f, v) in faults.iter().zip(ls.iter().filter(|v| kind(v) == "fault")) {
        assert_eq!(strs[f[1].as_u64().unwrap() as usize], v["fault"]);
        assert_eq!(strs[f[2].as_u64().unwrap() as usize], v["detail"]);
        assert_eq!(f[0], v["t_us"]);
    }
    // The script draws them as markers and rows.
    for class in [
        "fault-marker",
        "violation-marker",
        "fault-row",
        "violation-row",
    ] {
        assert!(html.contains(class), "the page script draws {class}");
    }

    // Messages: most sends find their receiving step, and some faults name the message they hit.
    // A DeliveryReport is informational: the master's agent only counts it and fires no
    // transition, so it has no receiving step to find (and failed copies — policy skips among
    // them — send one each), so it is left out of the ratio.
    let msgs = data["msgs"].as_array().unwrap();
    let out_text = |m: &Value| -> String {
        let step = &data["steps"][m[0].as_u64().unwrap_or(0) as usize];
        let out = &step[7][m[1].as_u64().unwrap_or(0) as usize];
        strs.get(out.as_u64().unwrap_or(u64::MAX) as usize)
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    let receivable: Vec<&Value> = msgs
        .iter()
        .filter(|m| !out_text(m).contains(": DeliveryReport "))
        .collect();
    let received = receivable
        .iter()
        .filter(|m| m[3].as_i64() >= Some(0))
        .count();
    assert!(
        received * 10 >= receivable.len() * 8,
        "{received} of {} messages matched to a receive",
        receivable.len()
    );
    assert!(
        msgs.iter().any(|m| m[4].as_i64() >= Some(0)),
        "a fault hits a message"
    );
    let steps = data["steps"].as_array().unwrap();
    for m in msgs.iter().filter(|m| m[3].as_i64() >= Some(0)) {
        let (s, r) = (
            &steps[m[0].as_u64().unwrap() as usize],
            &steps[m[3].as_u64().unwrap() as usize],
        );
        assert!(
            r[0].as_u64() >= s[0].as_u64(),
            "a message is received after it is sent"
        );
        assert_eq!(r[1], m[2], "received on the lane it was sent to");
    }
}

#[test]
fn hostile_text_is_escaped_everywhere() {
    let trace = hostile_trace();
    let html = render_html(&trace).expect("renders");
    let lower = html.to_ascii_lowercase();
    // The page's own two script elements close; nothing from the trace does.
    assert_eq!(
        lower.matches("</script").count(),
        2,
        "only the page's own </script>"
    );
    for bad in [
        "<img",
        "<svg onload",
        "<b id=",
        "<!--",
        "<i>",
        "<script>alert",
    ] {
        assert!(!lower.contains(bad), "unescaped {bad:?} in the page");
    }
    assert!(!html.contains('\u{2028}') && !html.contains('\u{2029}'));
    // Shown escaped in the header…
    assert!(html.contains("&lt;/script&gt;&lt;script&gt;alert(&#39;p&#39;)&lt;/script&gt;"));
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    // …and carried intact in the data.
    let data = embedded(&html);
    let strs: Vec<&str> = data["strs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "</script><b id=\"pwn\">x</b> & \"quotes\" 'single' → arrows",
        "→ agent-0: </script><script>alert(2)</script>",
        "<img src=x onerror=alert(3)> m0-i1@slave-<svg onload=alert(5)>",
        "</ScRiPt><svg onload=alert(4)> \u{2028}<!--",
    ] {
        assert!(strs.contains(&s), "{s:?} not carried intact");
    }
    assert_eq!(data["lanes"][2], "slave-<svg onload=alert(5)>");
}

fn hostile_trace() -> String {
    let header = serde_json::json!({
        "type": "header", "seed": 1, "commit": "\"><img src=x onerror=alert(1)>",
        "masters": 1, "slaves_per_master": 1, "trades": 1, "capacity": "TestMin",
        "profile": "</script><script>alert('p')</script> <!-- & \u{2028}",
    });
    let step = |t: u64, node: &str, input: &str, outputs: Vec<&str>| {
        serde_json::json!({
            "type": "step", "t_us": t, "node": node, "input": input,
            "transition": "core.delivery.T01", "from": "\"a\" → 'b'", "to": "<i>",
            "subject": "m0-i1@slave-<svg onload=alert(5)>", "outputs": outputs,
        })
    };
    [
        header,
        step(
            10,
            "core",
            "</script><b id=\"pwn\">x</b> & \"quotes\" 'single' → arrows",
            vec!["→ agent-0: </script><script>alert(2)</script>"],
        ),
        serde_json::json!({"type": "fault", "t_us": 15, "fault": "net_drop</script>",
            "detail": "<img src=x onerror=alert(3)> m0-i1@slave-<svg onload=alert(5)>"}),
        step(
            20,
            "agent-0",
            "</script><script>alert(2)</script>",
            vec!["→ pipe slave-<svg onload=alert(5)>: <!-- -->"],
        ),
        step(30, "slave-<svg onload=alert(5)>", "", vec![]),
        serde_json::json!({"type": "violation", "t_us": 40,
            "what": "</ScRiPt><svg onload=alert(4)> \u{2028}<!--"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn garbage_is_refused_with_the_line() {
    assert!(render_html("").is_err());
    assert!(render_html("\n\n").is_err());
    let e = render_html("{\"type\":\"header\",\"seed\":1}\nnot json").unwrap_err();
    assert!(e.contains("line 2"), "{e}");
    // Unknown line types and a missing header are warnings in the page, not failures.
    let html = render_html(
        "{\"type\":\"step\",\"t_us\":1,\"node\":\"core\",\"input\":\"\",\"transition\":\"x\",\
         \"from\":\"a\",\"to\":\"b\",\"subject\":\"\",\"outputs\":[]}\n{\"type\":\"mystery\"}",
    )
    .expect("renders");
    let w = embedded(&html)["warnings"].to_string();
    assert!(w.contains("no header") && w.contains("mystery"), "{w}");
}

#[test]
fn the_cli_writes_the_page_next_to_the_trace() {
    let dir = Scratch::new("cli");
    let trace = dir.0.join("seed-7.ndjson");
    std::fs::write(&trace, trace_of(7)).unwrap();
    let bin = env!("CARGO_BIN_EXE_echo-sim");
    let st = Command::new(bin)
        .args(["trace", "render"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let page = std::fs::read_to_string(dir.0.join("seed-7.html")).expect("FILE.html written");
    assert!(page.starts_with("<!DOCTYPE html>"));
    let out = dir.0.join("other.html");
    let st = Command::new(bin)
        .args(["trace", "render"])
        .arg(&trace)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        page,
        "rendering is deterministic"
    );
    let st = Command::new(bin)
        .args(["trace", "render"])
        .arg(dir.0.join("missing.ndjson"))
        .output()
        .unwrap();
    assert!(!st.status.success(), "a missing trace is an error");
}

// ---- the page in a browser --------------------------------------------------------------

#[test]
fn chromium_renders_one_intents_journey_with_its_fault() {
    require_chromium();
    let (seed, trace, intent) = journey_with_fault();
    let html = render_html(&trace).expect("renders");
    let dir = Scratch::new("journey");
    let page = dir.0.join(format!("seed-{seed}.html"));
    std::fs::write(&page, &html).unwrap();
    let url = file_url(&page, &format!("#filter={intent}"));

    // The DOM, filtered by the fragment.
    let dom = chromium(&dir.0, &url, &["--dump-dom".to_string()]);
    assert_page_ran(&dom, &url);
    assert!(
        dom.contains(&format!("<span class=\"term\">{intent} </span>")),
        "the status shows the fragment's filter"
    );
    let rows = table_rows(&dom);
    let steps: Vec<&(String, String)> = rows
        .iter()
        .filter(|(a, _)| attr(a, "class") == Some("step"))
        .collect();
    let nodes: BTreeSet<&str> = steps
        .iter()
        .filter_map(|(a, _)| attr(a, "data-node"))
        .collect();
    for lane in ["core", "agent-", "slave-", "master-0"] {
        assert!(
            nodes.iter().any(|n| n.starts_with(lane)),
            "{intent}: no step on a {lane} lane in the filtered table (lanes {nodes:?})"
        );
    }
    for (a, inner) in &steps {
        assert!(
            names_id(inner, &intent),
            "row {a} does not concern {intent}: {inner}"
        );
    }
    // Every step of the trace about the intent (by subject) is in the table.
    let own = lines(&trace)
        .iter()
        .filter(|v| kind(v) == "step")
        .filter(|v| {
            let s = v["subject"].as_str().unwrap_or("");
            s == intent || s.starts_with(&format!("{intent}@"))
        })
        .count();
    assert!(
        steps.len() >= own,
        "{} rows, {own} steps with {intent} as subject",
        steps.len()
    );
    let status = dom.split("<div id=\"status\"").nth(1).expect("status");
    assert!(status.contains(&format!("data-steps=\"{}\"", steps.len())));
    // The fault that names the intent: a row and a marker on the timeline.
    assert!(
        rows.iter()
            .any(|(a, inner)| attr(a, "class") == Some("fault-row") && names_id(inner, &intent)),
        "{intent}: no fault row naming it"
    );
    assert!(
        dom.contains("class=\"fault-marker\""),
        "no fault marker drawn"
    );
    assert!(dom.contains("class=\"mark k-slave"), "slave steps drawn");
    assert!(dom.contains("class=\"msg to-"), "message arrows drawn");

    // The screenshot: a real, non-trivial PNG of the window size.
    let png = dir.0.join("journey.png");
    chromium(&dir.0, &url, &[format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).expect("the screenshot exists");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1600, 1000), "window-sized screenshot");
    assert!(
        bytes.len() > 60_000,
        "a real picture, not a blank page ({} bytes)",
        bytes.len()
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::copy(&png, artifacts.join("trace-render.png")).unwrap();
    println!(
        "seed {seed}, {url}: {} rows; screenshot artifacts/trace-render.png",
        rows.len()
    );
}

#[test]
fn chromium_shows_hostile_text_as_text() {
    require_chromium();
    let dir = Scratch::new("hostile");
    let page = dir.0.join("hostile.html");
    std::fs::write(&page, render_html(&hostile_trace()).unwrap()).unwrap();
    for fragment in [
        "",
        "#filter=%3Cimg%20src%3Dx%20onerror%3Dalert(9)%3E",
        "#filter=m0-i1",
    ] {
        let url = file_url(&page, fragment);
        let dom = chromium(&dir.0, &url, &["--dump-dom".to_string()]);
        assert_page_ran(&dom, &url);
        let lower = dom.to_ascii_lowercase();
        for bad in ["<img", "<svg onload", "<b id=\"pwn\"", "<i>"] {
            assert!(
                !lower.contains(bad),
                "{url}: an element {bad:?} was injected"
            );
        }
        if fragment.is_empty() {
            assert!(
                dom.contains("&lt;/script&gt;&lt;b id=\"pwn\"&gt;x&lt;/b&gt;"),
                "shown as text"
            );
            assert!(
                dom.contains("class=\"violation-row\""),
                "the violation is a row"
            );
            assert!(dom.contains("class=\"violation-marker\""), "and a marker");
        }
    }
}
