//! The metadata table: one row per Id, from CSV or XLSX. `Id` and `Label` are required; the
//! known optional columns are typed; any other column is kept as a string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, SignalError};

/// The sampling rates a table may give (Hz): every real recording's lies far inside.
pub const MIN_SAMPLE_RATE: f64 = 1e-6;
pub const MAX_SAMPLE_RATE: f64 = 1e15;

/// One row of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaRow {
    pub id: u64,
    pub label: i64,
    pub dataset_id: Option<i64>,
    pub name: Option<String>,
    pub domain_id: Option<i64>,
    pub sample_rate: Option<f64>,
    pub length: Option<u64>,
    pub channels: Option<u64>,
    pub fault_size: Option<f64>,
    pub fault_location: Option<String>,
    /// Columns the table has beyond the known ones, by header.
    pub extra: BTreeMap<String, String>,
}

impl MetaRow {
    /// A column's value as text, known or not (for grouping and alternative labels).
    pub fn field(&self, column: &str) -> Option<String> {
        let num = |v: Option<f64>| v.map(|x| x.to_string());
        match column {
            "Id" => Some(self.id.to_string()),
            "Label" => Some(self.label.to_string()),
            "Dataset_id" => self.dataset_id.map(|v| v.to_string()),
            "Name" => self.name.clone(),
            "Domain_id" => self.domain_id.map(|v| v.to_string()),
            "Sample_Rate" => num(self.sample_rate),
            "Length" => self.length.map(|v| v.to_string()),
            "Channels" => self.channels.map(|v| v.to_string()),
            "Fault_Size" => num(self.fault_size),
            "Fault_Location" => self.fault_location.clone(),
            other => self.extra.get(other).cloned(),
        }
    }
}

/// The whole table, sorted by Id.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<MetaRow>,
}

impl Metadata {
    /// Reads a `.csv` or `.xlsx` table (chosen by extension).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        crate::error::metadata_of(path)?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let (header, records) = match ext.as_str() {
            "xlsx" | "xlsm" | "xls" | "ods" => read_sheet(path)?,
            _ => read_csv(path)?,
        };
        Self::from_records(path, header, records)
    }

    /// Builds the table from a header and string records, each with its 1-based line in the file
    /// (the common path of CSV and XLSX).
    pub fn from_records(path: &Path, header: Vec<String>, records: Vec<(usize, Vec<String>)>) -> Result<Self> {
        let bad = |reason: String| SignalError::BadTable { path: path.to_path_buf(), reason };
        let header: Vec<String> = header.into_iter().map(|h| h.trim().trim_start_matches('\u{feff}').to_string()).collect();
        // pandas would read a second `Label` as `Label.1` and this table its first alone: which
        // one the author meant is not ours to guess.
        if let Some((i, h)) = header.iter().enumerate().find(|(i, h)| !h.is_empty() && header[..*i].contains(h)) {
            return Err(bad(format!("column {} repeats the header {h:?} of an earlier column", i + 1)));
        }
        let col = |name: &str| header.iter().position(|h| h == name);
        // A header read as one column that holds tabs or semicolons is another delimiter's table.
        let delimiter = match header.as_slice() {
            [only] if only.contains('\t') => " (the header holds tabs: this table's columns are separated by commas, not tabs)",
            [only] if only.contains(';') => " (the header holds semicolons: this table's columns are separated by commas, not semicolons)",
            _ => "",
        };
        // A column of another case (`id`, `LABEL`) is named: the names are case-sensitive.
        let required = |name: &str| {
            col(name).ok_or_else(|| {
                let cased = header.iter().find(|h| h.eq_ignore_ascii_case(name)).map(|h| format!(" (column `{h}` differs in case: the names are case-sensitive)")).unwrap_or_default();
                bad(format!("no `{name}` column{cased}{delimiter}"))
            })
        };
        let id_col = required("Id")?;
        let label_col = required("Label")?;
        let known = ["Id", "Label", "Dataset_id", "Name", "Domain_id", "Sample_Rate", "Length", "Channels", "Fault_Size", "Fault_Location"];
        let mut rows = Vec::with_capacity(records.len());
        let mut seen = std::collections::HashSet::new();
        for (line, rec) in &records {
            let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(|s| s.trim()).filter(|s| !s.is_empty());
            if rec.iter().all(|v| v.trim().is_empty()) {
                continue;
            }
            let id_text = get(Some(id_col)).ok_or_else(|| bad(format!("row {line}: empty Id")))?;
            // Whole u64 range first (a store's dataset names reach 2^64 − 1), then the forms
            // spreadsheets write (`1.0`, `1e0`, `+1`).
            let id = id_text
                .trim()
                .parse::<u64>()
                .ok()
                .or_else(|| parse_integer(id_text).filter(|&v| v >= 0).map(|v| v as u64))
                .ok_or_else(|| bad(format!("row {line}: Id {id_text:?} is not a non-negative integer")))?;
            if !seen.insert(id) {
                return Err(bad(format!("row {line}: Id {id} appears twice")));
            }
            let label_text = get(Some(label_col)).ok_or_else(|| bad(format!("row {line} (Id {id}): empty Label")))?;
            let label = parse_integer(label_text).ok_or_else(|| bad(format!("row {line} (Id {id}): Label {label_text:?} is not an integer")))?;
            let typed_f = |name: &str| -> Result<Option<f64>> {
                match get(col(name)) {
                    None => Ok(None),
                    Some(t) => t.parse::<f64>().map(Some).map_err(|_| bad(format!("row {line} (Id {id}): {name} {t:?} is not a number"))),
                }
            };
            let typed_i = |name: &str| -> Result<Option<i64>> {
                match get(col(name)) {
                    None => Ok(None),
                    Some(t) => parse_integer(t).map(Some).ok_or_else(|| bad(format!("row {line} (Id {id}): {name} {t:?} is not an integer"))),
                }
            };
            let nonneg = |v: Option<i64>, name: &str| -> Result<Option<u64>> {
                match v {
                    Some(x) if x < 0 => Err(bad(format!("row {line} (Id {id}): {name} is negative"))),
                    other => Ok(other.map(|x| x as u64)),
                }
            };
            let mut extra = BTreeMap::new();
            for (c, h) in header.iter().enumerate() {
                if !known.contains(&h.as_str()) && !h.is_empty() {
                    extra.insert(h.clone(), rec.get(c).map(|s| s.trim().to_string()).unwrap_or_default());
                }
            }
            rows.push(MetaRow {
                id,
                label,
                dataset_id: typed_i("Dataset_id")?,
                name: get(col("Name")).map(str::to_string),
                domain_id: typed_i("Domain_id")?,
                sample_rate: match typed_f("Sample_Rate")? {
                    // A rate is a time scale (the ISFM's time channel is t / rate): none is
                    // "unknown"; 0, negative, NaN or infinite is a broken table, and so is one
                    // far outside any recording's (at 1e-20 Hz the time channel is ~1e25 and the
                    // first step's LayerNorm overflows to NaN).
                    Some(r) if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&r) => {
                        return Err(bad(format!("row {line} (Id {id}): Sample_Rate {r:e} Hz is outside {MIN_SAMPLE_RATE:e} to {MAX_SAMPLE_RATE:e} Hz")))
                    }
                    rate => rate,
                },
                length: nonneg(typed_i("Length")?, "Length")?,
                channels: nonneg(typed_i("Channels")?, "Channels")?,
                fault_size: typed_f("Fault_Size")?,
                fault_location: get(col("Fault_Location")).map(str::to_string),
                extra,
            });
        }
        rows.sort_by_key(|r| r.id);
        Ok(Metadata { path: path.to_path_buf(), columns: header, rows })
    }

    pub fn row(&self, id: u64) -> Option<&MetaRow> {
        self.rows.binary_search_by_key(&id, |r| r.id).ok().map(|i| &self.rows[i])
    }

    /// Writes the table as CSV (atomically).
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let werr = |reason: String| SignalError::Write { path: path.to_path_buf(), reason };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.columns).map_err(|e| werr(e.to_string()))?;
        for r in &self.rows {
            let rec: Vec<String> = self.columns.iter().map(|c| r.field(c).unwrap_or_default()).collect();
            w.write_record(&rec).map_err(|e| werr(e.to_string()))?;
        }
        let bytes = w.into_inner().map_err(|e| werr(e.to_string()))?;
        files::write_atomic(path, &bytes).map_err(|e| SignalError::Io { path: path.to_path_buf(), source: e })
    }
}

/// Integers as tables write them: `3`, `3.0`, ` 3 `.
fn parse_integer(t: &str) -> Option<i64> {
    if let Ok(v) = t.parse::<i64>() {
        return Some(v);
    }
    let f = t.parse::<f64>().ok()?;
    (f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15).then_some(f as i64)
}

/// A header and the records after it, each with its 1-based line (row) in the file.
type Records = (Vec<String>, Vec<(usize, Vec<String>)>);

fn read_csv(path: &Path) -> Result<Records> {
    let bad = |reason: String| SignalError::BadTable { path: path.to_path_buf(), reason };
    // Read whole within the memory budget (a device or a pipe has no size to check first).
    // The signal store given as the table (`--meta` and `--data` swapped) would read as bytes
    // that are not text, and first be read whole: its signature is looked at first (in a
    // regular file only: a pipe's first bytes would be consumed).
    if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        let mut head = [0u8; 8];
        let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
        if read.is_ok() && head == *b"\x89HDF\r\n\x1a\n" {
            return Err(bad("an HDF5 file (a signal store?), not a .csv or .xlsx table".into()));
        }
    }
    let bytes = files::read(path).map_err(|e| SignalError::Io { path: path.to_path_buf(), source: e })?;
    let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(&bytes[..]);
    let header = r.headers().map_err(|e| bad(e.to_string()))?.iter().map(str::to_string).collect();
    let mut records = Vec::new();
    // The parsed table takes several times the file (a string per cell, a row per Id): counted
    // with the file's bytes as it grows, so a table of millions of rows stops at the budget with
    // its name.
    let mut held: u128 = bytes.len() as u128;
    for (n, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        held += (rec.as_slice().len() + 32 * rec.len() + std::mem::size_of::<MetaRow>() + 64) as u128;
        limits::check(|| format!("{}: the table's rows", path.display()), held).map_err(|e| bad(e.to_string()))?;
        records.push((n + 2, rec.iter().map(str::to_string).collect()));
    }
    Ok((header, records))
}

/// A zipped workbook (xlsx, xlsm, ods) whose parts, unpacked, would not fit in the memory budget
/// is refused before calamine unpacks them: a 400 kB file can hold a part of 400 MB.
fn check_unpacked_size(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |reason: String| SignalError::BadTable { path: path.to_path_buf(), reason };
    let io = |e: std::io::Error| SignalError::Io { path: path.to_path_buf(), source: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    if f.read(&mut magic).map_err(io)? < 4 || &magic != b"PK\x03\x04" {
        return Ok(()); // not a zip (an xls): calamine's own checks apply
    }
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(format!("corrupt workbook: {e}")))?;
    let mut total: u128 = 0;
    for i in 0..zip.len() {
        total += zip.by_index_raw(i).map_err(|e| bad(format!("corrupt workbook: {e}")))?.size() as u128;
    }
    limits::check(|| format!("{}: the workbook's {} parts, unpacked", path.display(), zip.len()), total).map_err(|e| bad(e.to_string()))
}

fn read_sheet(path: &Path) -> Result<Records> {
    use calamine::{open_workbook_auto, Data, DataRef, Reader, Sheets};
    let bad = |reason: String| SignalError::BadTable { path: path.to_path_buf(), reason };
    check_unpacked_size(path)?;
    let mut wb = std::panic::catch_unwind(|| open_workbook_auto(path)).map_err(|_| bad("corrupt workbook".into()))?.map_err(|e| bad(e.to_string()))?;
    let first = wb.sheet_names().first().cloned().ok_or_else(|| bad("workbook has no sheet".into()))?;
    let cell = |d: Data| match d {
        Data::Empty => String::new(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        other => other.to_string(),
    };
    // The cells that exist, as (row, column, text). A sheet's declared dimensions are not read:
    // two cells at A1 and XFD1048576 would make a dense range of 1.7·10¹⁰ cells.
    let mut cells: Vec<(u32, u32, String)> = Vec::new();
    let mut keep = |(r, c): (u32, u32), v: DataRef<'_>| cells.push((r, c, cell(Data::from(v))));
    match &mut wb {
        Sheets::Xlsx(x) => {
            let mut reader = x.worksheet_cells_reader(&first).map_err(|e| bad(e.to_string()))?;
            while let Some(c) = reader.next_cell().map_err(|e| bad(e.to_string()))? {
                keep(c.get_position(), c.get_value().clone());
            }
        }
        Sheets::Xlsb(x) => {
            let mut reader = x.worksheet_cells_reader(&first).map_err(|e| bad(e.to_string()))?;
            while let Some(c) = reader.next_cell().map_err(|e| bad(e.to_string()))? {
                keep(c.get_position(), c.get_value().clone());
            }
        }
        other => {
            let range = other.worksheet_range(&first).map_err(|e| bad(e.to_string()))?;
            for (r, c, v) in range.used_cells() {
                cells.push((r as u32, c as u32, cell(v.clone())));
            }
        }
    }
    cells.retain(|c| !c.2.is_empty());
    cells.sort_by_key(|c| (c.0, c.1));
    // Columns counted from the first used one, as calamine's ranges do.
    let first_col = cells.iter().map(|c| c.1).min().unwrap_or(0);
    // Rows that have a cell, each as wide as its last cell (empty rows carry no Id), with their
    // sheet row number for messages. Past the header row, a row is at most one cell wider than
    // the header: no column reads cells beyond it, and a far cell on every row would otherwise
    // make each row thousands of empty strings wide (the row itself still needs its Id).
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    let mut current: Option<u32> = None;
    for (r, c, text) in cells {
        if current != Some(r) {
            rows.push((r as usize + 1, Vec::new()));
            current = Some(r);
        }
        let width = if rows.len() > 1 { rows[0].1.len() } else { usize::MAX };
        if let Some((_, row)) = rows.last_mut() {
            // Every cell past the header's width lands in the one slot after it.
            let c = ((c - first_col) as usize).min(width);
            if row.len() <= c {
                row.resize(c + 1, String::new());
            }
            row[c] = text;
        }
    }
    let mut rows = rows.into_iter();
    let (_, header) = rows.next().ok_or_else(|| bad("sheet is empty".into()))?;
    Ok((header, rows.collect()))
}
