-- A lodged BAS cycle keeps what was lodged and the receipt it got (issue #12): the outbound adapter's name
-- (`services/core/lodgement.py`: `recording` until a real SBR client exists), its reference, and the payload sent,
-- as the canonical JSON bytes the adapter was given (figures and dates only, no PII). They are written by the same
-- UPDATE that sets LODGED, so the immutability trigger of 0004 keeps them as they are.
ALTER TABLE core.bas_cycles
    ADD COLUMN lodgement_gateway   text,
    ADD COLUMN lodgement_reference text,
    ADD COLUMN lodgement_payload   text,
    ADD CONSTRAINT bas_cycles_lodgement_recorded CHECK (
        (status = 'LODGED') = (lodgement_gateway IS NOT NULL AND lodgement_reference IS NOT NULL
                               AND lodgement_payload IS NOT NULL)
    );
