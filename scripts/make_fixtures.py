#!/usr/bin/env python3
"""Writes the small HDF5/CSV/XLSX fixtures under tests/fixtures/ with h5py (run once; the files are
committed). Each layout the store must read: default h5py settings, libver="latest",
contiguous and chunked+gzip, float32 and float64, (L, C) and (L,).

    pip install h5py numpy openpyxl && python3 scripts/make_fixtures.py
"""
import csv, os
import h5py, numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)


def signal(i, L, C, dtype):
    t = np.arange(L, dtype=np.float64)
    x = np.stack([np.sin(0.01 * (i + 1) * (c + 1) * t) + 0.001 * t for c in range(C)], axis=1)
    return x.astype(dtype)


def write(name, libver=None, chunked=False, one_d=False, dtype=np.float32):
    kw = {"libver": libver} if libver else {}
    with h5py.File(os.path.join(OUT, name), "w", **kw) as f:
        for i in range(1, 6):
            L = 300 + 50 * i
            x = signal(i, L, 1 if one_d else 2, dtype)
            if one_d:
                x = x[:, 0]
            dkw = {"chunks": (64,) + x.shape[1:], "compression": "gzip", "compression_opts": 4} if chunked else {}
            f.create_dataset(str(i), data=x, **dkw)
        f.create_dataset("notes", data=np.arange(3))  # not an Id: must be reported and ignored


write("default_f32.h5")
write("latest_f32.h5", libver="latest")
write("chunked_gzip_f32.h5", chunked=True)
write("latest_chunked_gzip_f64.h5", libver="latest", chunked=True, dtype=np.float64)
write("one_d_f64.h5", one_d=True, dtype=np.float64)

# expected values (first/last rows of each Id) are recomputed by the tests from the same formula

# a sample with NaN, and one shorter than any window of 64
with h5py.File(os.path.join(OUT, "bad_values.h5"), "w") as f:
    x = signal(0, 400, 2, np.float32); x[123, 1] = np.nan
    f.create_dataset("1", data=x)
    f.create_dataset("2", data=signal(1, 40, 2, np.float32))
    f.create_dataset("3", data=signal(2, 400, 2, np.float32))

header = ["Id", "Dataset_id", "Name", "Label", "Domain_id", "Sample_Rate", "Length", "Channels", "Fault_Size",
          "Fault_Location", "Operator"]
rows = [[i, 1, "fixture", i % 2, 0, 12000, 300 + 50 * i, 2, 0.007, "", f"op{i}"] for i in range(1, 6)]
with open(os.path.join(OUT, "meta.csv"), "w", newline="") as f:
    w = csv.writer(f); w.writerow(header); w.writerows(rows)
# table/store mismatches: Id 9 only in the table; Id 5 only in the store
with open(os.path.join(OUT, "meta_mismatch.csv"), "w", newline="") as f:
    w = csv.writer(f); w.writerow(header); w.writerows(rows[:4] + [[9, 1, "fixture", 1, 0, 12000, 999, 2, "", "", ""]])
with open(os.path.join(OUT, "meta_no_label.csv"), "w", newline="") as f:
    w = csv.writer(f); w.writerow(["Id", "Name"]); w.writerow([1, "x"])
with open(os.path.join(OUT, "meta_bad_id.csv"), "w", newline="") as f:
    w = csv.writer(f); w.writerow(["Id", "Label"]); w.writerow([1, 0]); w.writerow(["sample_two", 1])
try:
    import openpyxl
    wb = openpyxl.Workbook(); ws = wb.active
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(os.path.join(OUT, "meta.xlsx"))
except ImportError:
    print("openpyxl missing: meta.xlsx not written")

# not HDF5 at all, and a real file cut short
with open(os.path.join(OUT, "not_hdf5.h5"), "wb") as f:
    f.write(b"Id,Label\n1,0\n" * 20)
data = open(os.path.join(OUT, "default_f32.h5"), "rb").read()
with open(os.path.join(OUT, "truncated.h5"), "wb") as f:
    f.write(data[: len(data) // 3])
# Declared-size lies (issue 13): datasets that declare 10^11 x 2 float32 (800 GB) and are never
# written, contiguous and chunked, each beside one honest sample; an XLSX table with a cell at
# XFD1048576 (a dense range of that sheet would be 1.7e10 cells).
for name, kw in [("liar_contiguous.h5", {}), ("liar_chunked.h5", {"chunks": (65536, 2)})]:
    with h5py.File(os.path.join(OUT, name), "w") as f:
        f.create_dataset("1", shape=(10**11, 2), dtype="f4", **kw)
        f.create_dataset("2", data=np.linspace(-1, 1, 4096 * 2, dtype="f4").reshape(4096, 2))
try:
    import openpyxl
    wb = openpyxl.Workbook(); ws = wb.active
    ws.append(["Id", "Label"]); ws.append([1, 0]); ws.append([2, 1])
    ws["XFD1048576"] = "far"
    wb.save(os.path.join(OUT, "meta_far_cell.xlsx"))
except ImportError:
    print("openpyxl missing: meta_far_cell.xlsx not written")
# Names and storage a store meets in the wild (fifth session of 2026-12-01): zero-padded Ids
# ("007" and "0007" are Id 7, like "7", which is read), and values kept in an external file (h5py's
# `external=`), which the reader refuses rather than follow: past the short file's end it would
# read zeros for 2^24 declared rows.
with h5py.File(os.path.join(OUT, "padded_names.h5"), "w") as f:
    for name in ["3", "007", "7", "0007"]:
        f.create_dataset(name, data=np.linspace(-1, 1, 512 * 2, dtype="f4").reshape(512, 2) * (1 + len(name)))
with open(os.path.join(OUT, "external.bin"), "wb") as f:
    f.write(np.zeros(64, dtype="f4").tobytes())
with h5py.File(os.path.join(OUT, "external_storage.h5"), "w") as f:
    f.create_dataset("1", shape=(2**24, 2), dtype="f4", external=[("external.bin", 0, h5py.h5f.UNLIMITED)])
    f.create_dataset("2", data=np.linspace(-1, 1, 512 * 2, dtype="f4").reshape(512, 2))
# Links, which h5py follows and the reader does not (second session of 2026-12-02):
# a soft link to an Id's dataset, one to nothing, and an external link; each is listed as ignored
# with its target.
with h5py.File(os.path.join(OUT, "links.h5"), "w") as f:
    f.create_dataset("1", data=np.linspace(-1, 1, 512 * 2, dtype="f4").reshape(512, 2))
    f.create_dataset("2", data=np.linspace(1, -1, 512 * 2, dtype="f4").reshape(512, 2))
    f["9"] = h5py.SoftLink("/1")
    f["10"] = h5py.SoftLink("/nothere")
    f["11"] = h5py.ExternalLink("default_f32.h5", "/1")
print("fixtures written to", os.path.abspath(OUT))
