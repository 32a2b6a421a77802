//! `inspect`: what a store + table hold, and every mismatch between them.

use std::sync::Arc;

use anyhow::Result;
use signal::{Dataset, Hdf5Store, Metadata, SignalStore};

use crate::args::DataArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(&a.data.data)?);
    let meta = Metadata::load(&a.data.meta)?;
    let ds = Dataset::join(store.clone(), meta);
    let mut lengths: Vec<usize> = ds.ids.iter().filter_map(|&id| store.info(id).ok().map(|s| s.length)).collect();
    lengths.sort_unstable();
    let median = |v: &[usize]| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2] as f64
        } else {
            (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
        }
    };
    let mut channels: Vec<usize> = ds.ids.iter().filter_map(|&id| store.info(id).ok().map(|s| s.channels)).collect();
    channels.sort_unstable();
    channels.dedup();
    let mut rates: Vec<String> = ds.ids.iter().filter_map(|&id| ds.row(id)?.sample_rate).map(|r| format!("{r}")).collect();
    rates.sort();
    rates.dedup();
    let labels = ds.label_counts();
    if a.json {
        let v = serde_json::json!({
            "store": a.data.data, "meta": a.data.meta,
            "ids": ds.ids.len(),
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "length": {"min": lengths.first(), "median": median(&lengths), "max": lengths.last()},
            "channels": channels, "sample_rates": rates,
            "missing_in_store": ds.missing_in_store, "missing_in_table": ds.missing_in_table,
            "disagreements": ds.disagreements.iter().map(|(id, w)| serde_json::json!({"id": id, "what": w})).collect::<Vec<_>>(),
            "ignored_datasets": store.ignored().iter().map(|i| serde_json::json!({"name": i.name, "reason": i.reason})).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return usable(&a, &ds);
    }
    outln!("store     {}", a.data.data.display());
    outln!("table     {}", a.data.meta.display());
    outln!("Ids       {} (in both)", ds.ids.len());
    let label_text: Vec<String> = labels.iter().map(|(l, n)| format!("{l}:{n}")).collect();
    outln!("labels    {}", label_text.join(" "));
    outln!("length    min {}  median {}  max {}", lengths.first().copied().unwrap_or(0), median(&lengths), lengths.last().copied().unwrap_or(0));
    outln!("channels  {}", channels.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "));
    outln!("rates     {} Hz", if rates.is_empty() { "unknown".into() } else { rates.join(", ") });
    let mut problems = 0;
    for id in &ds.missing_in_store {
        outln!("mismatch  Id {id}: in the table, not in the store");
        problems += 1;
    }
    for id in &ds.missing_in_table {
        outln!("mismatch  Id {id}: in the store, not in the table");
        problems += 1;
    }
    for (id, what) in &ds.disagreements {
        outln!("mismatch  Id {id}: {what}");
        problems += 1;
    }
    for i in store.ignored() {
        outln!("ignored   dataset {:?}: {}", i.name, i.reason);
    }
    if problems == 0 {
        outln!("mismatch  none");
    }
    usable(&a, &ds)
}

/// A pair with no Id in both is described, then fails: `train` and `evaluate` would refuse it,
/// and a script checking data with `inspect` must not see it pass.
fn usable(a: &Args, ds: &Dataset) -> Result<()> {
    if ds.ids.is_empty() {
        anyhow::bail!("no Id is in both {} and its table {}: nothing here can be trained on or evaluated", a.data.data.display(), a.data.meta.display());
    }
    Ok(())
}
