//! `gatehouse-harness`: check policies, run case files, and the pieces of `make run`.
//!
//! ```text
//! gatehouse-harness check FILE...
//! gatehouse-harness run [--envoy] [--module PATH] [--junit FILE] CASES...
//! gatehouse-harness envoy-config --policy FILE [--listen ADDR] [--admin ADDR]
//!                                [--upstream ADDR] [--module PATH] [--env NAME=VALUE]...
//!                                [--control ADDR]... [--filter-only]
//! gatehouse-harness render --policy FILE --target istio|envoy-gateway|control [OPTION]...
//! gatehouse-harness echo-upstream --listen ADDR
//! ```
//!
//! Exit status: 0 when everything passed, 1 when a check or a case failed, 2 on usage
//! errors.

use gatehouse_harness::cases::junit::{self, Suite};
use gatehouse_harness::cases::{
    self, BackendKind, CaseOutcome, CaseResult, PluginSource, RunOptions,
};
use gatehouse_harness::envoy::config::Bootstrap;
use gatehouse_harness::envoy::{default_wasm, echo};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  gatehouse-harness check FILE...
      check policy files (and *.cases.yaml case files); print every error as file:line:column,
      and warnings (valid but probably wrong, e.g. a localhost CORS origin in a production
      policy) as file:line:column: warning: ..., which do not fail the check
  gatehouse-harness run [--envoy] [--module PATH] [--junit FILE] CASES...
      run case files in the harness, or with --envoy in a real Envoy; --module overrides
      the case files' `module:`; --junit also writes the results as JUnit XML
  gatehouse-harness envoy-config --policy FILE [--listen ADDR] [--admin ADDR] [--upstream ADDR]
                                 [--module PATH] [--env NAME=VALUE]... [--control ADDR]...
                                 [--filter-only]
      print an Envoy bootstrap that loads the module with this policy (with a feed
      section: also the sync service, and with --control the cluster it polls, one
      --control per replica of the control service; --filter-only: no sync service,
      one worker runs the sync under a lease, as in Istio and Envoy Gateway, which add
      HTTP filters only)
  gatehouse-harness render --policy FILE --target istio|envoy-gateway|control
                           [--namespace NS] [--wasm-image REF] [--control-image REF]
                           [--control-host HOST] [--control-port PORT]
                           [--selector KEY=VALUE]... [--sidecar]
                           [--istio-delivery wasmplugin|envoyfilter]
                           [--gateway NAME] [--eg-listener XDS-NAME]
                           [--database sqlite|postgres] [--replicas N]
      print Kubernetes manifests as one YAML stream: Istio (a WasmPlugin, or the whole
      filter in the EnvoyFilter when routes hold the body; the EnvoyFilter; for a feed
      ServiceEntry and DestinationRule), Envoy Gateway (EnvoyExtensionPolicy,
      ClientTrafficPolicy, and an EnvoyPatchPolicy with the filter's other settings and
      for a feed the control cluster),
      or the control service (Deployment, Service, PodDisruptionBudget, Secret, and with
      SQLite its volume claim); Secrets carry names with empty values to fill; what the
      target cannot express is printed as warnings on stderr (docs/deploying.md)
  gatehouse-harness echo-upstream --listen ADDR
      serve an upstream that answers every request with what it received, as JSON

The module defaults to $GATEHOUSE_WASM, else target/wasm32-wasip1/release/gatehouse.wasm;
Envoy to $GATEHOUSE_ENVOY, else .venv/bin/envoy.";

/// A usage error: printed with the usage text, exit 2.
struct Usage(String);

type CmdResult = Result<ExitCode, Usage>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "check" => check(rest),
        "run" => run(rest),
        "envoy-config" => envoy_config(rest),
        "render" => render(rest),
        "echo-upstream" => echo_upstream(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Usage(format!("unknown command '{other}'"))),
    };
    match result {
        Ok(code) => code,
        Err(Usage(message)) => {
            eprintln!("gatehouse-harness: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Flags (`--name value` or `--name=value`, or bare `--switch`) and positional arguments.
struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

fn parse_args(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Args, Usage> {
    let mut out = Args {
        flags: Vec::new(),
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.positional.extend(it.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix("--") else {
            out.positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if switches.contains(&name) {
            if inline.is_some() {
                return Err(Usage(format!("--{name} takes no value")));
            }
            out.flags.push((name.to_string(), None));
        } else if with_value.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| Usage(format!("--{name} needs a value")))?,
            };
            out.flags.push((name.to_string(), Some(value)));
        } else {
            return Err(Usage(format!("unknown option --{name}")));
        }
    }
    Ok(out)
}

impl Args {
    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    fn addr(&self, name: &str, default: &str) -> Result<SocketAddr, Usage> {
        let text = self.value(name).unwrap_or(default);
        text.parse().map_err(|_| {
            Usage(format!(
                "--{name}: '{text}' is not an address like 127.0.0.1:10000"
            ))
        })
    }

    fn module(&self) -> PathBuf {
        self.value("module")
            .map_or_else(default_wasm, PathBuf::from)
    }
}

fn is_case_file(path: &str) -> bool {
    path.ends_with(".cases.yaml") || path.ends_with(".cases.yml")
}

/// `FILE:LINE:COLUMN: warning: PATH: MESSAGE`, one line per warning.
fn warning_lines(warnings: &gatehouse_core::policy::PolicyErrors) -> Vec<String> {
    warnings
        .errors
        .iter()
        .map(|w| {
            let at = match w.pos {
                Some(pos) => format!("{}:{pos}", warnings.source),
                None => warnings.source.clone(),
            };
            let field = if w.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", w.path)
            };
            format!("{at}: warning: {field}{}", w.message)
        })
        .collect()
}

/// Checks one policy file; prints `FILE: ok` (with its warnings, which do not fail the
/// check) or its errors. True when it is fine.
fn check_policy(path: &str) -> bool {
    match std::fs::read_to_string(path) {
        Err(e) => {
            println!("{path}: {e}");
            false
        }
        Ok(source) => match gatehouse_core::policy::load_yaml(path, &source) {
            Ok(loaded) => {
                for line in warning_lines(&loaded.warnings) {
                    println!("{line}");
                }
                match loaded.warnings.len() {
                    0 => println!("{path}: ok"),
                    1 => println!("{path}: ok (1 warning)"),
                    n => println!("{path}: ok ({n} warnings)"),
                }
                true
            }
            Err(errors) => {
                println!("{errors}");
                false
            }
        },
    }
}

fn check(args: &[String]) -> CmdResult {
    let args = parse_args(args, &[], &[])?;
    if args.positional.is_empty() {
        return Err(Usage("check needs at least one file".into()));
    }
    let mut all_ok = true;
    for path in &args.positional {
        if is_case_file(path) {
            match cases::load(Path::new(path)) {
                Ok(file) => {
                    println!("{path}: ok ({} cases)", file.cases.len());
                    if let PluginSource::Policy(policy) = &file.plugin {
                        all_ok &= check_policy(&policy.display().to_string());
                    }
                }
                Err(e) => {
                    println!("{e}");
                    all_ok = false;
                }
            }
        } else {
            all_ok &= check_policy(path);
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run(args: &[String]) -> CmdResult {
    let args = parse_args(args, &["module", "junit"], &["envoy"])?;
    if args.positional.is_empty() {
        return Err(Usage("run needs at least one case file".into()));
    }
    let kind = if args.has("envoy") {
        BackendKind::Envoy
    } else {
        BackendKind::Harness
    };
    let opts = RunOptions {
        module: args.value("module").map(PathBuf::from),
        ..RunOptions::default()
    };
    let mut suites: Vec<Suite> = Vec::new();
    for path in &args.positional {
        let mut suite = Suite {
            file: path.clone(),
            backend: kind,
            results: Vec::new(),
            error: None,
        };
        let outcome = cases::load(Path::new(path))
            .map_err(|e| format!("the case file does not load:\n{e}"))
            .and_then(|file| cases::run_file(&file, kind, &opts).map_err(|e| format!("{e:#}")));
        match outcome {
            Ok(file_results) => {
                for r in &file_results {
                    println!("{}", r.line());
                    if let CaseOutcome::Failed(why) = &r.outcome {
                        for line in why.lines() {
                            println!("    {line}");
                        }
                    }
                }
                suite.results = file_results;
            }
            Err(e) => {
                println!("FAIL [{kind}] {path}: {e}");
                suite.error = Some(e);
            }
        }
        suites.push(suite);
    }
    let results: Vec<CaseResult> = suites.iter().flat_map(|s| s.results.clone()).collect();
    let (passed, failed) = cases::run::counts(&results);
    // A file that could not be read or started counts as one failure.
    let failed = failed + suites.iter().filter(|s| s.error.is_some()).count();
    let skipped = results
        .iter()
        .filter(|r| r.outcome == CaseOutcome::Skipped)
        .count();
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    let mut ok = failed == 0;
    if let Some(junit_path) = args.value("junit")
        && let Err(e) = std::fs::write(junit_path, junit::render(&suites))
    {
        eprintln!("gatehouse-harness: cannot write {junit_path}: {e}");
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn envoy_config(args: &[String]) -> CmdResult {
    let args = parse_args(
        args,
        &[
            "policy", "listen", "admin", "upstream", "module", "env", "control",
        ],
        &["filter-only"],
    )?;
    if let Some(extra) = args.positional.first() {
        return Err(Usage(format!("unexpected argument '{extra}'")));
    }
    let policy = args
        .value("policy")
        .ok_or_else(|| Usage("envoy-config needs --policy FILE".into()))?;
    let mut env = Vec::new();
    for pair in args.values("env") {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Usage(format!("--env '{pair}': expected NAME=VALUE")))?;
        env.push((k.to_string(), v.to_string()));
    }
    let listen = args.addr("listen", "127.0.0.1:10000")?;
    let control = args
        .values("control")
        .into_iter()
        .map(|text| {
            text.parse().map_err(|_| {
                Usage(format!(
                    "--control: '{text}' is not an address like 127.0.0.1:8081"
                ))
            })
        })
        .collect::<Result<Vec<SocketAddr>, Usage>>()?;
    let admin = args.addr("admin", "127.0.0.1:9901")?;
    let upstream = args.addr("upstream", "127.0.0.1:10001")?;
    let module = args.module();
    let wasm = match std::fs::canonicalize(&module) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "gatehouse-harness: the module {} is not readable ({e}); build it with `make wasm`",
                module.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let source = match std::fs::read_to_string(policy) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{policy}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let loaded = match gatehouse_core::policy::load_yaml(policy, &source) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for line in warning_lines(&loaded.warnings) {
        eprintln!("{line}");
    }
    let pass_env = loaded.policy.secret_env_names();
    let bootstrap = Bootstrap {
        listen,
        admin,
        upstream,
        wasm,
        plugin_config_json: loaded.plugin_config_json,
        env,
        pass_env,
        control,
        filter_only: args.has("filter-only"),
        filter_config: None,
    };
    print!("{}", bootstrap.render());
    Ok(ExitCode::SUCCESS)
}

fn render(args: &[String]) -> CmdResult {
    use gatehouse_harness::render::{self, Database, IstioDelivery, Options, Target};
    let args = parse_args(
        args,
        &[
            "policy",
            "target",
            "namespace",
            "wasm-image",
            "control-image",
            "control-host",
            "control-port",
            "selector",
            "gateway",
            "istio-delivery",
            "eg-listener",
            "database",
            "replicas",
        ],
        &["sidecar"],
    )?;
    if let Some(extra) = args.positional.first() {
        return Err(Usage(format!("unexpected argument '{extra}'")));
    }
    let policy = args
        .value("policy")
        .ok_or_else(|| Usage("render needs --policy FILE".into()))?;
    let target = Target::parse(
        args.value("target")
            .ok_or_else(|| Usage("render needs --target".into()))?,
    )
    .map_err(Usage)?;
    let mut opts = Options::default();
    if let Some(v) = args.value("namespace") {
        opts.namespace = v.to_string();
    }
    if let Some(v) = args.value("wasm-image") {
        opts.wasm_image = v.trim_start_matches("oci://").to_string();
    }
    if let Some(v) = args.value("control-image") {
        opts.control_image = v.to_string();
    }
    opts.control_host = args.value("control-host").map(str::to_string);
    if let Some(v) = args.value("control-port") {
        opts.control_port = v
            .parse()
            .map_err(|_| Usage(format!("--control-port: '{v}' is not a port")))?;
    }
    let selector = args.values("selector");
    if !selector.is_empty() {
        opts.selector = selector
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Usage(format!("--selector '{pair}': expected KEY=VALUE")))
            })
            .collect::<Result<_, _>>()?;
    }
    opts.istio_sidecar = args.has("sidecar");
    if let Some(v) = args.value("gateway") {
        opts.gateway = v.to_string();
    }
    if let Some(v) = args.value("istio-delivery") {
        opts.istio_delivery = Some(IstioDelivery::parse(v).map_err(Usage)?);
    }
    opts.eg_listener = args.value("eg-listener").map(str::to_string);
    if let Some(v) = args.value("database") {
        opts.database = Database::parse(v).map_err(Usage)?;
    }
    if let Some(v) = args.value("replicas") {
        if opts.database == Database::Sqlite {
            return Err(Usage(
                "--replicas needs --database postgres (SQLite runs one replica)".into(),
            ));
        }
        opts.replicas = match v.parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(Usage(format!(
                    "--replicas: '{v}' is not a count of 1 or more"
                )));
            }
        };
    }
    let source = match std::fs::read_to_string(policy) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{policy}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let loaded = match gatehouse_core::policy::load_yaml(policy, &source) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for line in warning_lines(&loaded.warnings) {
        eprintln!("{line}");
    }
    let notes = match target {
        Target::Istio => render::istio::warnings(&loaded, &opts),
        Target::EnvoyGateway => render::envoy_gateway::warnings(&loaded, &opts),
        Target::Control => Vec::new(),
    };
    for note in notes {
        eprintln!("gatehouse-harness: warning: {note}");
    }
    print!(
        "{}",
        render::to_yaml(&render::render(target, &loaded, &opts))
    );
    Ok(ExitCode::SUCCESS)
}

fn echo_upstream(args: &[String]) -> CmdResult {
    let args = parse_args(args, &["listen"], &[])?;
    let addr = args.addr("listen", "127.0.0.1:10001")?;
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatehouse-harness: cannot listen on {addr}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("echo upstream listening on {bound}");
    echo::serve_forever(&listener);
    Ok(ExitCode::SUCCESS)
}
