"""DICOM services (pynetdicom): for now the Verification SCP that modalities ping."""
