"""The wire: HL7 v2 over MLLP and DICOM, translated to and from domain commands."""
