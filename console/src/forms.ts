// Forms whose errors are the API's own words (Magnum's errors[0].detail), shown next to the field they name.
import { ApiError } from "./api";
import { h, uid } from "./dom";

export interface FieldSpec {
  name: string; // the API's attribute name
  label: string;
  type?: "text" | "number" | "select" | "checkbox" | "password";
  options?: [string, string][]; // value, label
  value?: string | number | boolean;
  required?: boolean;
  min?: number;
  hint?: string;
  mentions?: string[]; // other words by which the API's messages name this field
}

export class Form {
  readonly el: HTMLFormElement;
  private inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();
  private errors = new Map<string, HTMLElement>();
  private specs: FieldSpec[];
  private formError: HTMLElement;
  private button: HTMLButtonElement;

  constructor(title: string, specs: FieldSpec[], submitLabel: string, onSubmit: (values: Record<string, any>) => Promise<void>) {
    this.specs = specs;
    const titleId = uid("form");
    this.formError = h("p", { class: "error", role: "alert", hidden: true });
    this.button = h("button", { type: "submit", class: "primary" }, submitLabel);
    const rows = specs.map((spec) => this.row(spec));
    this.el = h("form", { class: "form", "aria-labelledby": titleId, novalidate: true },
      h("h3", { id: titleId }, title), ...rows, this.formError, h("div", { class: "actions" }, this.button));
    this.el.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      this.clear();
      this.button.disabled = true;
      try {
        await onSubmit(this.values());
      } catch (err) {
        this.show(err);
      } finally {
        this.button.disabled = false;
      }
    });
  }

  private row(spec: FieldSpec): HTMLElement {
    const id = uid(`f-${spec.name}`);
    const errId = `${id}-error`;
    let input: HTMLInputElement | HTMLSelectElement;
    if (spec.type === "select") {
      input = h("select", { id, name: spec.name, required: spec.required },
        ...(spec.options ?? []).map(([v, l]) => h("option", { value: v, selected: v === spec.value }, l)));
    } else {
      input = h("input", {
        id, name: spec.name, type: spec.type ?? "text", required: spec.required,
        min: spec.min, autocomplete: spec.type === "password" ? "current-password" : "off",
      });
      if (spec.type === "checkbox") (input as HTMLInputElement).checked = !!spec.value;
      else if (spec.value !== undefined) input.value = String(spec.value);
    }
    const err = h("p", { id: errId, class: "field-error", hidden: true });
    const hint = spec.hint ? h("p", { class: "hint", id: `${id}-hint` }, spec.hint) : null;
    input.setAttribute("aria-describedby", [hint ? `${id}-hint` : "", errId].filter(Boolean).join(" "));
    this.inputs.set(spec.name, input);
    this.errors.set(spec.name, err);
    const label = h("label", { for: id, class: spec.required ? "required" : null }, spec.label);
    return h("div", { class: spec.type === "checkbox" ? "field check" : "field" }, label, input, hint, err);
  }

  values(): Record<string, any> {
    const out: Record<string, any> = {};
    for (const spec of this.specs) {
      const input = this.inputs.get(spec.name)!;
      if (spec.type === "checkbox") out[spec.name] = (input as HTMLInputElement).checked;
      else if (input.value.trim() === "") continue;
      else if (spec.type === "number") out[spec.name] = Number(input.value);
      else out[spec.name] = input.value.trim();
    }
    return out;
  }

  input(name: string): HTMLInputElement | HTMLSelectElement | undefined {
    return this.inputs.get(name);
  }

  clear(): void {
    this.formError.hidden = true;
    this.formError.textContent = "";
    for (const [name, err] of this.errors) {
      err.hidden = true;
      err.textContent = "";
      this.inputs.get(name)?.removeAttribute("aria-invalid");
    }
  }

  // The field the API's message names (its attribute name, or a word the spec lists), else the whole form.
  show(err: unknown): void {
    const detail = err instanceof ApiError || err instanceof Error ? err.message : String(err);
    const lower = detail.toLowerCase();
    const names = [...this.specs].sort((a, b) => b.name.length - a.name.length);
    const spec = names.find((s) => [s.name, ...(s.mentions ?? [])].some((w) => lower.includes(w.toLowerCase())));
    if (spec) {
      const el = this.errors.get(spec.name)!;
      el.textContent = detail;
      el.hidden = false;
      const input = this.inputs.get(spec.name)!;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } else {
      this.formError.textContent = detail;
      this.formError.hidden = false;
    }
  }
}
