export function App(): JSX.Element {
  return <div className="app">hi</div>;
}
export const Button = ({ label }: { label: string }) => <button>{label}</button>;
