"""The DICOM files the scenarios send, made with pydicom and numpy (no app code), the same bytes for both servers.

- CT: pydicom's CT_small.dcm (128x128, signed 16-bit) upscaled bilinearly to 512x512 with light seeded Gaussian
  noise (sigma 6 HU), so PNG/JPEG encoders see CT-like texture rather than smooth gradients; WindowCenter/Width
  40/400, Explicit VR Little Endian, ~514 KB.
- CR: pydicom-data's RG1_J2KR.dcm (1955x1841, MONOCHROME1, JPEG 2000 lossless) and RG1_UNCR.dcm (uncompressed).
- A ~1 GiB multi-frame file written to disk frame by frame (the memory scenario), never held in memory.

Every copy gets a fresh SOP Instance UID (and each Workload its own Study/Series), so copies are distinct files
with distinct SHA-256s and cache keys on both servers: a "cold" request is really cold.
"""

from __future__ import annotations

import copy
import io
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_SIZE = 512
CR_J2K_NAME = "RG1_J2KR.dcm"
CR_UNC_NAME = "RG1_UNCR.dcm"
PATIENTS = [("Smith^John", "BENCH-P1"), ("Garcia^Maria", "BENCH-P2"), ("Nakamura^Ken", "BENCH-P3")]
WARMUP_PATIENT = ("Warmup^Bench", "BENCH-WARMUP")


def upscale_bilinear(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize of a 2-D array (corner-aligned), numpy only."""
    a = a.astype(np.float64)
    r = np.linspace(0, a.shape[0] - 1, rows)
    c = np.linspace(0, a.shape[1] - 1, cols)
    r0 = np.floor(r).astype(int)
    c0 = np.floor(c).astype(int)
    r1 = np.minimum(r0 + 1, a.shape[0] - 1)
    c1 = np.minimum(c0 + 1, a.shape[1] - 1)
    fr = (r - r0)[:, None]
    fc = (c - c0)[None, :]
    top = a[r0][:, c0] * (1 - fc) + a[r0][:, c1] * fc
    bottom = a[r1][:, c0] * (1 - fc) + a[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def make_ct_template() -> pydicom.Dataset:
    """The 512x512 16-bit CT every HTTP scenario sends (see the module docstring)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array  # stored values (signed 16-bit)
    big = upscale_bilinear(arr, CT_SIZE, CT_SIZE)
    big += np.random.default_rng(20240101).normal(0.0, 6.0, big.shape)
    signed = int(ds.PixelRepresentation) == 1
    info = np.iinfo(np.int16) if signed else np.iinfo(np.uint16)
    big = np.clip(np.rint(big), info.min, info.max).astype(np.int16 if signed else np.uint16)
    for keyword in ("LargestImagePixelValue", "SmallestImagePixelValue", "WindowCenterWidthExplanation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Rows = CT_SIZE
    ds.Columns = CT_SIZE
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) * arr.shape[0] / CT_SIZE for v in ds.PixelSpacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = big.astype(big.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = "Bench^RenderCT"
    ds.PatientID = "BENCH-CT"
    return ds


def small_ct() -> pydicom.Dataset:
    """pydicom's CT_small.dcm as it is (the load scenario's uploads)."""
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def cr_path(name: str) -> Path | None:
    """A file of pydicom-data, or None when the package is not installed."""
    try:
        import data_store  # pydicom-data
    except ImportError:
        return None
    p = Path(data_store.__file__).parent / "data" / name
    return p if p.exists() else None


class Workload:
    """Distinct copies of a template: same pixels, one fresh Study/Series per Workload, a fresh SOP per copy.

    `patient` (name, id) sets the patient on a private copy of the template; `numbered` also sets InstanceNumber
    1, 2, ... (a series as a scanner writes it); `new_study_per_copy` gives every copy its own Study and Series.
    """

    def __init__(self, template: pydicom.Dataset, label: str, *, patient: tuple[str, str] | None = None,
                 numbered: bool = False, new_study_per_copy: bool = False):  # fmt: skip
        if patient is not None:
            template = copy.deepcopy(template)  # Dataset.copy() shares the data elements
            template.PatientName, template.PatientID = patient
        self.template = template
        self.label = label
        self.study = generate_uid()
        self.series = generate_uid()
        self.numbered = numbered
        self.new_study_per_copy = new_study_per_copy
        self.count = 0
        self.last_sop = ""

    def copy_bytes(self) -> bytes:
        ds = self.template
        self.count += 1
        if self.new_study_per_copy:
            self.study, self.series = generate_uid(), generate_uid()
        if self.numbered:
            ds.InstanceNumber = self.count
            ds.SeriesNumber = 1
            ds.StudyDescription = self.label
        self.last_sop = generate_uid()
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.SOPInstanceUID = self.last_sop
        ds.file_meta.MediaStorageSOPInstanceUID = self.last_sop
        ds.SeriesDescription = f"bench {self.label}"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def copy(self) -> tuple[str, bytes]:
        """(SOP Instance UID, file) of a fresh copy."""
        content = self.copy_bytes()
        return self.last_sop, content


def write_series(template: pydicom.Dataset, folder: Path, n: int, label: str) -> tuple[list[Path], int]:
    """`n` numbered copies of one series as IM000001.dcm... in `folder`; (paths, total bytes)."""
    folder.mkdir(parents=True)
    wl = Workload(template, label, numbered=True)
    files, total = [], 0
    for i in range(n):
        data = wl.copy_bytes()
        p = folder / f"IM{i + 1:06d}.dcm"
        p.write_bytes(data)
        files.append(p)
        total += len(data)
    return files, total


MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage
MF_ROWS = MF_COLS = 512
MF_FRAME_BYTES = MF_ROWS * MF_COLS * 2


def write_multiframe(path: Path, frames: int) -> dict:
    """A valid Part-10 multi-frame file (512x512, 16 bits allocated, 12 stored) written frame by frame; memory: one
    frame. Each frame is a gradient shifted by its number, with the 1-based number in its first 8 pixels, so a render
    of the wrong frame shows. Returns its UIDs and size."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MF_GRAY_WORD_SC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MF_GRAY_WORD_SC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Memory^Bench"
    ds.PatientID = "MEMBENCH"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = time.strftime("%Y%m%d")
    ds.StudyTime = time.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"memory bench {frames} frames"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x0018, 0x2002)  # Frame Label Vector (SC multi-frame default)
    ds.Rows = MF_ROWS
    ds.Columns = MF_COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    pixel_len = frames * MF_FRAME_BYTES  # even, < 4 GiB (checked by the caller)
    yy, xx = np.mgrid[0:MF_ROWS, 0:MF_COLS]
    base = ((xx + yy) * 2).astype(np.uint16)  # 0..2044, a diagonal gradient
    with open(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR LE: tag, VR, 2 reserved bytes, 4-byte length.
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_len))
        for f in range(frames):
            frame = (base + np.uint16((f * 2) % 4096)) & np.uint16(0x0FFF)
            frame[0, :8] = f + 1
            fh.write(frame.astype("<u2", copy=False).tobytes())
    check = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(check.NumberOfFrames) == frames and check.SOPInstanceUID == ds.SOPInstanceUID
    return {"sop_instance_uid": str(ds.SOPInstanceUID), "frames": frames, "bytes": path.stat().st_size, "pixel_data_bytes": pixel_len}
