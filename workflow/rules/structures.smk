rule structure:
    """A KNN supercell for one data set (extended XYZ carries class and variant; CIF beside it)."""
    output:
        xyz=f"{RESULTS}/structures/{{dataset}}.xyz",
        cif=f"{RESULTS}/structures/{{dataset}}.cif",
    params:
        job=job_settings,
    log:
        f"{RESULTS}/logs/structure/{{dataset}}.log",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "polarmap structure --settings {params.job:q} --out {output.xyz} > {log} 2>&1"


rule qstem_inputs:
    """QSTEM .cfg atom file and .qsc parameters matching the abTEM simulation."""
    input:
        structure=rules.structure.output.xyz,
    output:
        qsc=f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.qsc",
        cfg=f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.cfg",
    params:
        job=job_settings,
        out_dir=lambda wildcards, output: Path(output.qsc).parent,
    log:
        f"{RESULTS}/logs/qstem_inputs/{{dataset}}.log",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "polarmap qstem --settings {params.job:q} --structure {input.structure} --out-dir {params.out_dir} > {log} 2>&1"
