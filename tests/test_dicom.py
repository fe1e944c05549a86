"""DICOM series written with pydicom from a phantom read back as the phantom's volume and affine."""

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.io import BadInput
from rayssl.data.preprocess import load_case
from rayssl.data.sources import resolve_source

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.11"


def write_series(folder, hu: np.ndarray, affine_ras: np.ndarray, series_uid: str, patient="P1", number=3,
                 sop_class=CT_IMAGE, order=None, orientation_of=None):
    """One CT series of ``hu`` ``[X, Y, Z]`` whose voxel-to-RAS map is ``affine_ras``: a DICOM slice per z."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept = 1.0, -1024.0
    for z in (order if order is not None else range(hu.shape[2])):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice_{z:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, ds.SeriesNumber = series_uid, "1.2.3", patient, number
        ds.Modality = "CT"
        r, c = (orientation_of(z) if orientation_of else (row, col))
        ds.ImageOrientationPatient = [float(v) for v in (*r, *c)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, z, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = float(spacing[2])
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if sop_class == CT_IMAGE:
            pixels = np.round((hu[:, :, z].T - intercept) / slope).astype(np.int16)  # [rows = y, columns = x]
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = pixels.tobytes()
        ds.save_as(str(folder / f"slice_{z:03d}.dcm"), enforce_file_format=True)


@pytest.fixture
def phantom(tmp_path):
    from rayssl.data.synthetic import make_ct_phantoms

    root = make_ct_phantoms(tmp_path / "ct", n=1, seed=0, shape=(40, 36, 12), spacing=(1.6, 1.4, 3.0))
    img = nib.load(str(root / "imagesTr" / "ct_000.nii.gz"))
    return np.asarray(img.dataobj).astype(np.float32), img.affine


def test_a_series_reads_back_as_the_phantom_volume_and_affine(tmp_path, phantom):
    hu, affine = phantom
    write_series(tmp_path / "dicom" / "study" / "ct", hu, affine, "1.2.9.1", order=[5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10])
    src = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'dicom'}", folds=2))
    assert src.kind == "dicom" and src.recipe == "ct_btcv" and [c.case_id for c in src.cases] == ["P1_3"]
    volume = load_case(src.cases[0], "none")
    np.testing.assert_allclose(volume["image"][0], hu, atol=0.5)  # slices sorted by position, HU rescaled
    np.testing.assert_allclose(volume["source_affine"], affine, atol=1e-4)  # LPS positions -> RAS affine


def test_an_oblique_series_keeps_its_orientation(tmp_path, phantom):
    hu, _ = phantom
    theta = 0.4
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) @ np.diag([0.8, 0.9, 2.5])
    oblique[:3, 3] = (10.0, -20.0, 30.0)
    write_series(tmp_path / "d", hu, oblique, "1.2.9.2")
    case = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'd'}", folds=2)).cases[0]
    np.testing.assert_allclose(load_case(case, "none")["source_affine"], oblique, atol=1e-4)


@pytest.mark.parametrize("defect, reason", [
    ("missing_slice", r"1 slice\(s\) missing"),
    ("unequal_spacing", "unequal slice gaps"),
    ("mixed_orientation", "mixes 2 slice orientations"),
    ("not_images", "no image slices"),
])
def test_bad_series_are_refused_with_the_reason(tmp_path, phantom, defect, reason):
    hu, affine = phantom
    folder = tmp_path / "d"
    if defect == "missing_slice":
        write_series(folder, hu, affine, "1.2.9.3")
        (folder / "slice_006.dcm").unlink()
    elif defect == "unequal_spacing":
        write_series(folder, hu, affine, "1.2.9.4")
        import pydicom

        ds = pydicom.dcmread(str(folder / "slice_006.dcm"))
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]),
                                   float(ds.ImagePositionPatient[2]) + 1.2]
        ds.save_as(str(folder / "slice_006.dcm"))
    elif defect == "mixed_orientation":
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        row, col = lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])
        write_series(folder, hu, affine, "1.2.9.5", orientation_of=lambda z: (row, col) if z < 6 else (col, row))
    else:
        write_series(folder, hu, affine, "1.2.9.6", sop_class=SR_DOCUMENT)
    case = resolve_source(DataConfig(source=f"dicom:{folder}", folds=2)).cases[0]
    with pytest.raises(BadInput, match=reason) as e:
        load_case(case, "none")
    assert e.value.path == str(folder)


def test_series_are_split_by_uid_and_non_dicom_files_reported(tmp_path, phantom):
    hu, affine = phantom
    write_series(tmp_path / "d" / "a", hu, affine, "1.2.9.7", patient="P1", number=1)
    write_series(tmp_path / "d" / "b", hu[:, :, :6], affine, "1.2.9.8", patient="P2", number=1)
    (tmp_path / "d" / "b" / "notes.dcm").write_text("not dicom")
    (tmp_path / "d" / "README.txt").write_text("ignored")
    src = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'd'}", folds=2))
    assert [c.case_id for c in src.cases] == ["P1_1", "P2_1"] and [len(c.image) for c in src.cases] == [12, 6]
    assert [(p.rsplit("/", 1)[-1], r.split(" (")[0]) for p, r in src.missing] == [("notes.dcm", "not a readable DICOM file")]
