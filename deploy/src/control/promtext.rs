//! Merging Prometheus text from several processes into one valid exposition: each family's
//! `# HELP`/`# TYPE` once, all of its samples together, each source's samples with extra labels.

use std::collections::HashMap;

/// One family's lines, in order.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges `sources` (exposition text, labels to add to each of its samples) into one exposition.
pub fn merge(sources: &[(&str, Vec<(&str, String)>)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    fn family<'a>(families: &'a mut HashMap<String, Family>, order: &mut Vec<String>, name: &str) -> &'a mut Family {
        if !families.contains_key(name) {
            order.push(name.to_owned());
        }
        families.entry(name.to_owned()).or_default()
    }
    for (text, labels) in sources {
        let mut typed: HashMap<String, String> = HashMap::new();
        let extra = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",");
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let f = family(&mut families, &mut order, rest.split_whitespace().next().unwrap_or_default());
                f.help.get_or_insert_with(|| line.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let name = parts.next().unwrap_or_default();
                typed.insert(name.to_owned(), parts.next().unwrap_or_default().to_owned());
                family(&mut families, &mut order, name).kind.get_or_insert_with(|| line.to_owned());
            } else if !line.starts_with('#') {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains_key(*b)))
                    .unwrap_or(name);
                let sample = if extra.is_empty() {
                    line.to_owned()
                } else if line[name_end..].starts_with('{') {
                    let inner = &line[name_end + 1..];
                    let sep = if inner.starts_with('}') { "" } else { "," };
                    format!("{name}{{{extra}{sep}{inner}")
                } else {
                    format!("{name}{{{extra}}}{}", &line[name_end..])
                };
                family(&mut families, &mut order, base).samples.push(sample);
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let Some(f) = families.remove(&name) else { continue };
        for line in f.help.iter().chain(f.kind.iter()).chain(f.samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_stay_together_with_one_type_line_and_extra_labels() {
        let a = "# TYPE squall_events_applied_total counter\nsquall_events_applied_total{worker=\"0\"} 5\n\
                 # TYPE squall_checkpoint_write_seconds histogram\nsquall_checkpoint_write_seconds_bucket{le=\"0.1\"} 1\n\
                 squall_checkpoint_write_seconds_sum 0.05\nsquall_checkpoint_write_seconds_count 1\n";
        let b = "# TYPE squall_events_applied_total counter\nsquall_events_applied_total{worker=\"2\"} 7\nup 1\n";
        let merged = merge(&[(a, vec![("process", "0".into())]), (b, vec![("process", "1".into())])]);
        assert_eq!(
            merged,
            "# TYPE squall_events_applied_total counter\n\
             squall_events_applied_total{process=\"0\",worker=\"0\"} 5\n\
             squall_events_applied_total{process=\"1\",worker=\"2\"} 7\n\
             # TYPE squall_checkpoint_write_seconds histogram\n\
             squall_checkpoint_write_seconds_bucket{process=\"0\",le=\"0.1\"} 1\n\
             squall_checkpoint_write_seconds_sum{process=\"0\"} 0.05\n\
             squall_checkpoint_write_seconds_count{process=\"0\"} 1\n\
             up{process=\"1\"} 1\n"
        );
        assert_eq!(merge(&[("x 1\n", vec![])]), "x 1\n");
    }
}
