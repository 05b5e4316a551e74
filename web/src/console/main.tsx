import { render } from "preact";
import "../ui/styles.css";
import { Console } from "./Console";

render(<Console />, document.getElementById("root")!);
