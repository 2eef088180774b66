"""Reading and writing CT series: DICOM (folder, zip, single file), NIfTI, 16-bit TIFF.

Readers turn files into a :class:`covidct.preprocessing.volume.CTVolume` (int16 HU ``[N, H, W]``,
spacing in mm); writers store a volume in the same formats. Every failure is a
:class:`covidct.errors.InputError` subclass naming the file and the tag.
"""
