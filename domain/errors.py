"""Domain errors: raised when a command breaks a rule, never used for control flow elsewhere."""


class DomainError(Exception):
    """A command was refused by a domain rule; the message is safe to show the sender."""


class IllegalTransition(DomainError):
    def __init__(self, accession: str, state: str, action: str) -> None:
        super().__init__(f"exam {accession}: cannot {action} while {state}")
        self.accession = accession
        self.state = state
        self.action = action


class ExamAlreadyOrdered(DomainError):
    def __init__(self, accession: str) -> None:
        super().__init__(f"exam {accession}: already ordered")
        self.accession = accession


class UnknownExam(DomainError):
    def __init__(self, accession: str) -> None:
        super().__init__(f"exam {accession}: no such order")
        self.accession = accession


class UnknownPatient(DomainError):
    def __init__(self, patient_key: str) -> None:
        super().__init__(f"patient {patient_key}: not registered")
        self.patient_key = patient_key


class ForeignProcedureStep(DomainError):
    """An MPPS tried to end an exam that another MPPS started: the modality's two steps
    disagree about which procedure they perform, and a person has to decide."""

    def __init__(self, accession: str, mpps_uid: str, started_by: str) -> None:
        super().__init__(
            f"exam {accession}: performed procedure step {mpps_uid} did not start it "
            f"(started by {started_by})"
        )
        self.accession = accession
        self.mpps_uid = mpps_uid
        self.started_by = started_by


class StudyAlreadyLinked(DomainError):
    def __init__(self, study_instance_uid: str, accession: str) -> None:
        super().__init__(f"study {study_instance_uid}: already linked to exam {accession}")
        self.study_instance_uid = study_instance_uid
        self.accession = accession


class UnknownStudy(DomainError):
    def __init__(self, study_instance_uid: str) -> None:
        super().__init__(f"study {study_instance_uid}: no instances stored")
        self.study_instance_uid = study_instance_uid


class OrderFrozen(DomainError):
    """The placer changed an order after the modality began it: a person has to reconcile."""

    def __init__(self, accession: str, state: str) -> None:
        super().__init__(f"exam {accession}: order cannot change once the exam is {state}")
        self.accession = accession
        self.state = state


class PatientMergedAway(DomainError):
    """A patient id that was merged into another no longer takes updates of its own."""

    def __init__(self, patient_key: str, survivor_key: str) -> None:
        super().__init__(f"patient {patient_key}: merged into {survivor_key}")
        self.patient_key = patient_key
        self.survivor_key = survivor_key


class ForcedTransitionRefused(DomainError):
    """Operations asked for a forced move the table of allowed forced moves does not hold."""

    def __init__(self, accession: str, state: str, target: str, allowed: list[str]) -> None:
        options = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"exam {accession}: cannot force {state} -> {target} (allowed from {state}: {options})"
        )
        self.accession = accession
        self.state = state
        self.target = target
